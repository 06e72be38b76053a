"""Judging a model's outputs: the task (single- or multi-label: tasks.py, multilabel.py), metrics,
calibration, operating point, confidence intervals, the per-class and per-label reports, plots, Grad-CAM
explanations, the report of an evaluated split and published results to compare with. Works on logits, targets and
a model's declared anatomy; imports only utils/."""
