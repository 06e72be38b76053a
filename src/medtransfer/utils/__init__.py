"""The bottom layer: errors, paths, console and log file, run status, distributed helpers, config
composition and normalization statistics; durable runs (atomic file writes, weights-only checkpoint
loading and the Trainer's CheckpointIO, the run-dir lock, sweep re-runs); run names (a multirun job's
swept overrides) and training length (a minimum of optimizer steps); a command's process (start and
exit). Imports nothing from medtransfer outside utils/."""
