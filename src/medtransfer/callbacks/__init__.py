"""Lightning callbacks that make a run directory self-describing and TensorBoard informative."""
