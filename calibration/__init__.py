"""Degradation library, calibration clip sets and feeds (numpy/OpenCV), legacy TensorRT calibrator."""
