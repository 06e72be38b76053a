"""Lightning loggers configured in conf/logger/: TensorBoard with one event file per run, runs named
by their swept overrides, and an HPARAMS entry of the real metrics."""
