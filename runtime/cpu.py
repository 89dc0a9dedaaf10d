"""INT8 bundles on onnxruntime's CPU provider: smaller than FP32, and slower on every CPU.

`vsdmot-export --int8` places Q/DQ pairs on the inputs of weighted layers only (NVIDIA's placement
for TensorRT explicit quantisation: TensorRT fuses them into INT8 kernels on the device).
onnxruntime's CPU provider (1.32) fuses a convolution into an integer `QLinearConv` only with a
QuantizeLinear after its output and u8 activations, which TensorRT refuses. So it dequantises and
runs the float convolution, with the Q/DQ work on top, whatever the CPU's int8 instructions (even
ORT's own fully fused u8 layout ran this detector at 0.87x FP32 on AVX-512 VNNI). Measured end to end against the
FP32 bundle (docs/export_measurements.md "INT8 on onnxruntime's CPU provider"): 0.72x on an AVX2
EPYC without VNNI, 0.59x on an AVX-512 EPYC with VNNI."""

from __future__ import annotations

import logging

from .logs import log_once

log = logging.getLogger(__name__)

INT8_ON_CPU = ("INT8 networks on onnxruntime's CPU provider: their Q/DQ layout is TensorRT's, which onnxruntime "
               "runs as dequantise + float convolution, so they are slower than FP32 on any CPU (an all-INT8 "
               "bundle: 0.59-0.72x end to end, measured with and without VNNI; 0.98x with the detector kept "
               "FP32). The INT8 bundle is for TensorRT on the device, "
               "or for its size; for speed on a CPU use an FP32 bundle")


def warn_int8_on_cpu() -> None:
    """Log once per process that INT8 networks opened on onnxruntime's CPU provider run slower than FP32."""
    log_once(log.name, logging.WARNING, INT8_ON_CPU)
