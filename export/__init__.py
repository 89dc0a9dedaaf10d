"""Export chain: prune -> recover -> to_onnx -> simplify -> quantize -> parity -> accuracy gate -> bundle."""
