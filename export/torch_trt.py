"""`vsdmot-export --target torch-tensorrt`: the bundle's networks compiled by Torch-TensorRT, for
PyTorch applications on the device.

`vsdmot-edge` runs the bundle's ONNX files (on a GPU through TensorRT engines, `--target tensorrt`).
An application that keeps its networks in PyTorch gets them here instead: each network's torch
module, the one its bundle ONNX was exported from (pruned and recovered when pruned; its parity
with the ONNX is in the manifest), compiled with `torch_tensorrt.compile(ir="dynamo")` at the
bundle's static shapes and saved as an ExportedProgram (`torch_tensorrt.save`). Load one with
`import torch_tensorrt; torch.export.load(path).module()`; it takes and returns the tensors of the
ONNX file's inputs and outputs, in the same order.

A compiled program holds TensorRT engines for one GPU and one TensorRT, so it is cached on the device
(`<engine cache>/torch-tensorrt/<network>-<precision>-<key>/`, keyed like the engines: the bundle
file's sha256, the Torch-TensorRT and TensorRT versions, the GPU, the precision), with a stamp, and
never put in the bundle (whose files are hash-checked and portable).

Precision: FP16 kernels allowed for `--fp16` and `--int8` bundles, FP32 for `--fp32`. Torch-TensorRT
builds INT8 only from a module quantised by NVIDIA ModelOpt, which this export does not make, so
an INT8 network's program is FP16: INT8 runs through the bundle's Q/DQ ONNX.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from vsdmot.runtime.backends import strongly_typed
from vsdmot.runtime.bundle import file_sha256, load_bundle, read_stamped
from vsdmot.runtime.engine_cache import EngineKey, default_engine_cache, engine_dir
from vsdmot.runtime.errors import DeviceError
from vsdmot.runtime.locks import waiting_lock
from vsdmot.runtime.mot import atomic_write_bytes

from .to_onnx import TorchNet

log = logging.getLogger(__name__)

PROGRAM = "program.ep"


def program_precision(bundle_precision: str, trt=None) -> str:
    """fp32 for an FP32 bundle, else fp16 (Torch-TensorRT's INT8 needs a ModelOpt-quantised module).
    Where TensorRT builds strongly typed networks only (`trt` without BuilderFlag.FP16: TensorRT 11),
    `enabled_precisions` no longer lowers float layers to FP16, so the program is FP32 and keyed so."""
    if bundle_precision == "fp32":
        return "fp32"
    if trt is not None and strongly_typed(trt):
        log.warning("TensorRT %s builds strongly typed networks only: Torch-TensorRT's programs stay FP32 "
                    "(enabled_precisions is weak typing)", getattr(trt, "__version__", "?"))
        return "fp32"
    return "fp16"


def compile_programs(out: str | os.PathLike, nets: Mapping[str, TorchNet],
                     cache_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Compile and cache each network of the published bundle at `out`; {network: program path}.
    A program already cached for this file, device and precision is reused."""
    import tensorrt
    import torch
    import torch_tensorrt

    bundle = load_bundle(out)
    precision = program_precision(bundle.precision, tensorrt)
    versions = f"torch_tensorrt {torch_tensorrt.__version__}, tensorrt {tensorrt.__version__}"
    gpu = program_device(torch)
    root = Path(cache_root or default_engine_cache()) / "torch-tensorrt"
    programs = {}
    for name, net in nets.items():
        onnx = bundle.file(f"{name}.onnx")
        key = EngineKey(file_sha256(onnx), versions, gpu, precision)
        folder = engine_dir(root, onnx, key)
        with waiting_lock(folder.with_name(folder.name + ".lock"), f"compiling {name}"):  # one compile per program
            if cached_program(folder, key) is None:
                log.info("compiling %s with Torch-TensorRT (%s, %s)", name, precision, versions)
                store_program(folder, key, lambda path, net=net: compile_program(net, precision, path))
        programs[name] = folder / PROGRAM
        log.warning("Torch-TensorRT %s program for %s: %s (import torch_tensorrt; torch.export.load(path).module())",
                    precision, name, programs[name])
    return programs


def program_device(torch) -> str:
    """The device programs are keyed by: the engines' text (`cuda_device`: model and driver, so a JetPack
    update recompiles) where cuda-python or pycuda is there, else torch's view of the model."""
    from vsdmot.runtime.cuda import cuda_device
    from vsdmot.runtime.errors import DeviceError

    try:
        return cuda_device()
    except DeviceError:
        props = torch.cuda.get_device_properties(0)  # the model, not just its name (every Orin is "Orin")
        return f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, CUDA {torch.version.cuda})"


def compile_program(net: TorchNet, precision: str, path: Path) -> None:
    """torch module -> Torch-TensorRT GraphModule (static input shapes) -> ExportedProgram at `path`."""
    import torch
    import torch_tensorrt

    module = copy.deepcopy(net.module).eval().cuda()  # the caller's module stays where it was
    inputs = [t.cuda() for t in net.inputs.values()]  # forward() order = the ONNX inputs' order
    dtypes = {torch.float32} | ({torch.float16} if precision == "fp16" else set())
    with torch.no_grad():
        compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, enabled_precisions=dtypes)
    torch_tensorrt.save(compiled, str(path), inputs=inputs)


def cached_program(folder: Path, key: EngineKey) -> Path | None:
    """The cached program when its stamp names this key and its bytes are intact; None when absent
    or stale (logged: it is compiled again)."""
    try:
        data = read_stamped(folder / PROGRAM, folder / "stamp.json", asdict(key), "program_sha256",
                            "Torch-TensorRT program", verb="compiled")
    except DeviceError as e:
        log.warning("%s; compiling again", e)
        return None
    return None if data is None else folder / PROGRAM


def store_program(folder: Path, key: EngineKey, write) -> Path:
    """`write(tmp_path)` the program, then move it and its stamp in (a kill leaves no half program)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{PROGRAM}"  # keeps the .ep suffix torch_tensorrt.save writes under
    write(tmp)
    with open(tmp, "rb+") as f:  # on disk before the rename, as store_engine's (a power cut: no empty program)
        os.fsync(f.fileno())
    stamp = {**asdict(key), "program_sha256": file_sha256(tmp)}
    os.replace(tmp, folder / PROGRAM)
    atomic_write_bytes(folder / "stamp.json", json.dumps(stamp, indent=1).encode())
    return folder / PROGRAM

