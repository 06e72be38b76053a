"""The bottom layer: errors, paths, console and log file, run status, distributed helpers, config
composition, normalization statistics, run names (a multirun job's swept overrides) and training
length (a minimum of optimizer steps). Imports nothing from medtransfer outside utils/."""
