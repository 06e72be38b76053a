"""Lightning loggers configured in conf/logger/: TensorBoard with an HPARAMS entry of the real metrics."""
