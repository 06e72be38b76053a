"""Lightning callbacks of a run, each listed with its options in conf/callbacks/: checkpoints on
interrupt, run files, sample images, fitting on validation, explanations, the test report, the progress
bar. Imports every layer below the commands."""
