"""The export's measured defaults, in a module without torch, so `vsdmot-export --help` runs
on an install that has none (a device's)."""

DEFAULT_PRUNE = 0.0  # 2026-11-24: no pruned bundle passes the gate (closest 10 %: drop 2.10, 0.92x speed; docs/export_measurements.md)
RECOVER_SECONDS = 685.0  # pruning's recovery budget, CPU s, split by MACs: detector 600 + student 85
DEFAULT_METHOD = "minmax"  # the measured default calibration method (docs/export_measurements.md)
TARGETS = ("onnx", "tensorrt", "torch-tensorrt")
