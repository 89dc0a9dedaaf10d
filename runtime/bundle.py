"""Model bundles: load and verify a directory of networks described by its `manifest.json`.

    bundle = load_bundle("runtime/assets/default")
    bundle.file("detector.onnx")        # Path, its sha256 verified at load
    bundle.params("quality.json")       # dict, parsed JSON params
    bundle.manifest["calibration"]      # provenance, calibration, accuracy vs FP32, ...

`load_bundle` refuses, with `BundleError` saying what was expected and what was found:
an unreadable manifest, a schema version it does not know, a bundle from an incompatible
vsdmot, a manifest edited after it was written (its `manifest_sha256` no longer matches), a
listed file that is missing, or whose size or sha256 differs, and a bundle whose accuracy gate
failed without `--force`. Files in the directory that the manifest does not list (an engine
cache, say) are ignored. The manifest digest is integrity, not authenticity: it catches edits
and truncation, not someone who rewrites the whole bundle.

The writer is `vsdmot.export.bundle`; it uses `manifest_digest` and `file_sha256` from here so
writer and loader hash the same way. No torch here (`vsdmot.runtime` stays slim).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vsdmot import __version__

from .errors import BundleError
from .logs import log_once

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when a reader of the old layout would misread the new one
MANIFEST = "manifest.json"
DIGEST_FIELD = "manifest_sha256"  # sha256 of the canonical manifest without this field
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "default"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_stamped(path: Path, stamp_path: Path, expected: Mapping[str, Any], sha_field: str,
                 label: str, verb: str = "made") -> bytes | None:
    """The bytes at `path` when its JSON stamp matches `expected` and records their sha256 under
    `sha_field`; None when `path` is absent; DeviceError saying what differs otherwise. One check
    for every stamped cache (TensorRT engines, legacy INT8 calibration caches)."""
    from .errors import DeviceError

    if not path.is_file():
        return None
    try:
        found = json.loads(stamp_path.read_text())
    except (OSError, ValueError) as e:
        raise DeviceError(f"{label} {path}: no readable stamp ({e}); refusing an unstamped cache") from None
    for name, want in expected.items():
        if found.get(name) != want:
            raise DeviceError(f"{label} {path}: {verb} for {name}={found.get(name)!r}, expected {want!r}; "
                              "refusing the stale cache")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != found.get(sha_field):
        raise DeviceError(f"{label} {path}: sha256 does not match its stamp (truncated or altered); refusing it")
    return data


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest as canonical JSON (sorted keys, no spaces), `manifest_sha256` left out."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def engine_cache_key(onnx_sha256: str, trt_version: str, device: str, precision: str) -> str:
    """The engine-cache key, checked: 16 hex digits over ONNX hash + TensorRT version + GPU + precision,
    as `runtime.engine_cache.EngineKey(...).digest()` computes it for the backends. `device` is the
    GPU as `runtime.cuda.cuda_device()` names it ("Orin (sm_87, 8 SMs, driver 12020)")."""
    if len(onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in onnx_sha256):
        raise ValueError(f"engine_cache_key: expected a 64-digit lowercase hex sha256, got {onnx_sha256!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"engine_cache_key: precision expected one of {list(PRECISIONS)}, got {precision!r}")
    if not trt_version or not device:
        raise ValueError(f"engine_cache_key: TensorRT version and GPU name must be non-empty, got "
                         f"{trt_version!r}, {device!r}")
    from .engine_cache import EngineKey  # which imports this module

    return EngineKey(onnx_sha256, trt_version, device, precision).digest()


def compatible_version(bundle_version: str, running_version: str = __version__) -> bool:
    """Same major version (and for 0.x, the same minor): the manifest layout and network I/O agree."""
    def major_minor(v: str) -> tuple[int, int]:
        parts = (v.split("+")[0].split(".") + ["0", "0"])[:2]
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)

    try:
        (bm, bn), (rm, rn) = major_minor(bundle_version), major_minor(running_version)
    except (ValueError, AttributeError):
        return False
    return bm == rm and (bm != 0 or bn == rn)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle. Paths are only handed out for files the manifest lists."""

    path: Path  # the bundle directory
    manifest: Mapping[str, Any] = field(repr=False)  # the parsed, verified manifest.json

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision", ""))

    @property
    def names(self) -> list[str]:
        """Every file the manifest lists, sorted."""
        return sorted(self.manifest["files"])

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def entry(self, name: str) -> Mapping[str, Any]:
        """The manifest's record for one file: sha256, size, precision, inputs, outputs, ..."""
        try:
            return self.manifest["files"][name]
        except KeyError:
            raise BundleError(f"bundle {self.path}: expected a file named {name!r}; it lists "
                              f"{self.names}") from None

    def file(self, name: str) -> Path:
        """Path of a listed file (verified at load)."""
        self.entry(name)
        return self.path / name

    def params(self, name: str) -> dict[str, Any]:
        """A listed JSON parameter file (quality.json, ...), parsed."""
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"bundle {self.path}: {name} should be JSON params; could not parse it: {e}") from None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle directory (or its manifest.json). BundleError on any mismatch."""
    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    manifest = read_manifest(root)
    check_schema(root, manifest)
    check_digest(root, manifest)
    check_files(root, manifest["files"])
    check_gate(root, manifest)
    log.debug("bundle %s verified: %d files, %s", root, len(manifest["files"]), manifest.get("precision"))
    return Bundle(root, manifest)


def read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root}: expected a directory with {MANIFEST}, found no such directory")
    if not mpath.is_file():
        weights = (root / "detector.pt").is_file()  # a training output or a weights folder, given as a bundle
        raise BundleError(f"bundle {root}: expected {MANIFEST}, found none " + (
            f"(it holds torch weights: make a bundle of them with `vsdmot-export --fp32 --out DIR {root}`)"
            if weights else "(not a bundle, or an export that did not pass its accuracy gate)"))
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"bundle {root}: {MANIFEST} expected an object with a 'files' mapping")
    return manifest


def check_schema(root: Path, manifest: Mapping[str, Any]) -> None:
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        raise BundleError(f"bundle {root}: expected schema_version {SCHEMA_VERSION}, found {found!r} "
                          f"(re-export it with this vsdmot {__version__})")
    made_by = str(manifest.get("vsdmot_version", ""))
    if not compatible_version(made_by):
        raise BundleError(f"bundle {root}: written by vsdmot {made_by or '(unknown)'}, expected one "
                          f"compatible with vsdmot {__version__} (same major, and minor for 0.x)")


def check_digest(root: Path, manifest: Mapping[str, Any]) -> None:
    want, got = manifest.get(DIGEST_FIELD), manifest_digest(manifest)
    if want != got:
        raise BundleError(f"bundle {root}: {MANIFEST} was modified after export: its contents hash to "
                          f"{got}, its {DIGEST_FIELD} records {want!r}")


def check_files(root: Path, files: Mapping[str, Any]) -> None:
    for name, entry in files.items():
        check_name(root, name)
        fpath = root / name
        if not fpath.is_file():
            raise BundleError(f"bundle {root}: expected file {name} (sha256 {entry.get('sha256')}), found none")
        size = fpath.stat().st_size
        if "size" in entry and size != entry["size"]:
            raise BundleError(f"bundle {root}: {name} expected {entry['size']} bytes, found {size} "
                              f"(truncated or altered)")
        got = file_sha256(fpath)
        if got != entry.get("sha256"):
            raise BundleError(f"bundle {root}: {name} expected sha256 {entry.get('sha256')}, found {got} "
                              f"(the file was altered after export)")


def check_name(root: Path, name: str) -> None:
    """Manifest names are relative POSIX paths inside the bundle: no absolute paths, no '..'."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise BundleError(f"bundle {root}: expected relative file names inside the bundle, found {name!r}")


def check_gate(root: Path, manifest: Mapping[str, Any]) -> None:
    """A bundle that failed its accuracy gate loads only when it was forced, and then says so."""
    gate = manifest.get("accuracy_gate") or {}
    if gate and not gate.get("passed") and not gate.get("forced"):
        raise BundleError(f"bundle {root}: its accuracy gate failed ({gate.get('reason', 'no reason')}) "
                          f"and it was not exported with --force")
    if gate and not gate.get("passed"):  # once per bundle and process: profile and reloads load it again
        log_once(log.name, logging.WARNING, f"bundle {root} failed its accuracy gate and was published with --force "
                 f"({gate.get('reason', 'no reason')}): for study, not for a deployment")
