"""The bottom layer: errors, paths, console and log file, run status, distributed helpers, config
composition and normalization statistics. Imports nothing from medtransfer outside utils/."""
