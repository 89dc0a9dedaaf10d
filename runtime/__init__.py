"""The slim runtime: numpy, OpenCV and onnxruntime only. Never imports torch."""
