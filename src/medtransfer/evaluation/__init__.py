"""Judging a model's outputs: metrics, calibration, operating point, confidence intervals, the per-class
report, plots, Grad-CAM explanations and the report of an evaluated split. Works on logits, targets and
a model's declared anatomy; imports only utils/."""
