"""Judging a model's outputs: metrics, calibration, operating point, confidence intervals, the per-class
report, plots, Grad-CAM explanations, the report of an evaluated split and published results to compare with. Works on logits, targets and
a model's declared anatomy; imports only utils/."""
