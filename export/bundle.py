"""Step: write a model bundle (files + manifest.json) into a staging directory, then put it in place.

    stage = write_bundle(contents, BundleConfig(precision="int8"), staging_dir)   # loads as valid
    ... the accuracy gate evaluates `stage` ...
    publish(stage, out_dir, gate)      # gate passed or forced: atomic rename into out_dir
                                       # otherwise: out_dir.rejected (refused by the loader) + BundleError

The manifest (schema `SCHEMA_VERSION` of runtime/bundle.py) records: vsdmot and tool versions;
per file its sha256, size, precision, role and ONNX inputs/outputs; provenance (checkpoints,
teacher, training data, the YOLOX-nano Apache-2.0 notice carried as NOTICE); calibration
(sources, frame count, quality histogram, method); parity per network; accuracy vs FP32 and
the gate's verdict (and whether it was forced). `manifest_sha256` seals it (runtime/bundle.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsdmot import __version__
from vsdmot._cli import handling
from vsdmot.runtime.bundle import DIGEST_FIELD, MANIFEST, PRECISIONS, SCHEMA_VERSION, file_sha256, manifest_digest
from vsdmot.runtime.errors import BundleError

NETWORKS = ("detector", "student", "tracker")  # a bundle's networks: `<name>.onnx`, manifest role `<name>`

log = logging.getLogger(__name__)
ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}


@dataclass(frozen=True)
class BundleConfig:
    precision: str = "int8"  # the bundle's headline precision (fp32 | fp16 | int8)
    tracker: str = "e2e"  # the tracker `vsdmot-edge run` uses by default (manifest "tracker")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"bundle precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")


@dataclass
class BundleFile:
    source: Path  # where the chain produced it
    role: str  # detector | student | tracker | params | notice | report
    precision: str = ""  # fp32 | fp16 | int8 for networks, "" otherwise


@dataclass
class BundleContents:
    files: dict[str, BundleFile]  # bundle name -> file
    provenance: dict[str, Any] = field(default_factory=dict)  # checkpoints, teacher, data, notices
    calibration: dict[str, Any] = field(default_factory=dict)  # sources, frames, histogram, method
    parity: dict[str, Any] = field(default_factory=dict)  # per network: thresholds and results
    export: dict[str, Any] = field(default_factory=dict)  # pruning ratio, methods, steps, forced...


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made the bundle (absent ones are left out)."""
    import importlib.metadata as md

    out = {}
    for dist in ("onnx", "onnxruntime", "torch", "torch-pruning", "onnxslim", "onnxsim", "numpy", "opencv-python-headless"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def io_specs(path: Path) -> dict[str, list[dict[str, Any]]]:
    """ONNX graph inputs and outputs as [{name, shape, dtype}]."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        return {"name": v.name, "shape": [d.dim_value if d.dim_value else -1 for d in t.shape.dim],
                "dtype": ONNX_DTYPES.get(t.elem_type, str(t.elem_type))}

    return {"inputs": [spec(v) for v in graph.input if v.name not in inits], "outputs": [spec(v) for v in graph.output]}


def file_entry(path: Path, f: BundleFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"sha256": file_sha256(path), "size": path.stat().st_size, "role": f.role}
    if f.precision:
        entry["precision"] = f.precision
    if path.suffix == ".onnx":
        entry.update(io_specs(path))
    return entry


def write_bundle(contents: BundleContents, cfg: BundleConfig, out_path: str | Path) -> Path:
    """Copy the files into `out_path` (a fresh staging directory) and seal a manifest; returns the dir."""
    out = Path(out_path)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    entries = {}
    for name, f in sorted(contents.files.items()):
        if not f.source.is_file():
            raise ValueError(f"bundle: {name} expected at {f.source}, found nothing")
        shutil.copyfile(f.source, out / name)
        entries[name] = file_entry(out / name, f)
    manifest = {
        "schema_version": SCHEMA_VERSION, "vsdmot_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "precision": cfg.precision, "tracker": cfg.tracker, "tools": tool_versions(), "files": entries,
        "provenance": contents.provenance, "calibration": contents.calibration, "parity": contents.parity,
        "export": contents.export, "engine_cache_key": "runtime.bundle.engine_cache_key(onnx sha256, TensorRT, GPU, precision)",
    }
    seal(out, manifest)
    log.info("bundle staged in %s: %s", out, ", ".join(entries))
    return out


def seal(root: Path, manifest: dict[str, Any]) -> None:
    manifest.pop(DIGEST_FIELD, None)
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
    os.replace(tmp, root / MANIFEST)


def rewrite_copy(reference: Path, out: Path, edits: Mapping[str, Any]) -> Path:
    """Copy the bundle `reference` to `out`, apply `edits[name](path)` to those files in place,
    update their sha256 and size and reseal: a derived bundle (a gate control, a noise-floor null)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(reference, out)
    manifest = json.loads((out / MANIFEST).read_text())
    for name, edit in edits.items():
        edit(out / name)
        manifest["files"][name].update(sha256=file_sha256(out / name), size=(out / name).stat().st_size)
    seal(out, manifest)
    return out


def record_gate(stage: Path, accuracy: Mapping[str, Any], gate: Mapping[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Add the measured accuracy, the gate's verdict and `extra` files already in `stage` (the
    export report) to a staged manifest, and re-seal it."""
    manifest = json.loads((stage / MANIFEST).read_text())
    manifest["accuracy"], manifest["accuracy_gate"] = dict(accuracy), dict(gate)
    for name in extra:
        manifest["files"][name] = file_entry(stage / name, BundleFile(stage / name, "report"))
    seal(stage, manifest)


def publish(stage: Path, out: Path, gate: Mapping[str, Any]) -> Path:
    """Move a staged bundle into `out` when its gate passed or was forced; else refuse (BundleError)."""
    if not (gate.get("passed") or gate.get("forced")):
        rejected = out.with_name(out.name + ".rejected")
        _replace(stage, rejected)
        raise BundleError(f"accuracy gate refused the bundle: {gate.get('reason')}. Nothing was written to {out}; "
                          f"the refused files are in {rejected} (the loader refuses them). Re-run with --force "
                          f"to publish anyway (recorded in the manifest)")
    _replace(stage, out)
    log.info("bundle written to %s%s", out, " (gate FORCED)" if gate.get("forced") and not gate.get("passed") else "")
    return out


def foreign_files(out: Path) -> list[str]:
    """Paths under `out` that a bundle there would not account for: everything but the manifest and
    the files it lists, or everything when the manifest is not a bundle's (no JSON `files` table).
    Replacing `out` deletes them, so a non-empty answer refuses the export: a folder that merely
    holds some `manifest.json` (a web app's), or a bundle a user added notes or recordings to, was
    wiped."""
    try:
        keep = {MANIFEST, *json.loads((out / MANIFEST).read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        keep = set()  # no bundle manifest: nothing there is a bundle's
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if not p.is_dir() and str(p.relative_to(out)) not in keep)


def check_replaceable(out: Path) -> None:
    """ValueError unless `out` is absent, empty, or a bundle with nothing else in it."""
    if out.is_dir() and any(out.iterdir()):
        extra = foreign_files(out)
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            raise ValueError(f"--out {out}: holds files that are not part of a bundle ({shown}); an export replaces "
                             "the whole directory, so it refuses: move them, or choose a new directory")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block ends, then act as they would have: for steps
    that must not stop halfway. Deferred in Python's handlers, not by a signal mask: the kernel hands
    a process's signal to any thread that does not block it (tqdm's monitor, onnxruntime's pool),
    and Python then runs the handler in the main thread all the same (elsewhere this holds nothing)."""
    pending: list[int] = []
    try:
        with handling((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), lambda signum, frame: pending.append(signum)):
            yield
    finally:
        for s in pending:
            signal.raise_signal(s)  # now, to the handler it was meant for


def _replace(stage: Path, out: Path) -> None:
    """Atomically swap `stage` into `out`; refuse to delete a directory that is not a bundle."""
    if out.exists():
        check_replaceable(out)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        try:
            with signals_held():  # a SIGTERM between the two renames left --out missing
                os.replace(out, old)
                try:
                    os.replace(stage, out)
                except BaseException:
                    if not out.exists():  # the previous bundle goes back (else another export published there)
                        os.replace(old, out)
                    raise
        finally:
            if out.exists():  # never delete the previous bundle while --out is empty
                shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out)
