"""Step stamps (what makes each export step idempotent) and the export report (markdown + JSON).

Every step writes its output file and, beside it, `<output>.step.json`: the step's name, the
key it was built from (input hash + config + versions of the tools that write it), the output's
sha256, size, seconds and details (parity, accuracy, what was pruned...). A step whose output
exists with a stamp of the same key
and an unchanged output hash is skipped and says so. The report is built from the stamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from vsdmot.runtime.bundle import file_sha256

log = logging.getLogger(__name__)
STAMP_SUFFIX = ".step.json"


def fingerprint(*parts: Any) -> str:
    """sha256 over JSON of the parts (dataclasses as dicts, paths as strings): a step's input key."""
    def norm(p: Any) -> Any:
        return asdict(p) if is_dataclass(p) and not isinstance(p, type) else str(p) if isinstance(p, Path) else p

    text = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tool_version(dist: str) -> str:
    """The installed version of a distribution, "" when it is not installed."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


def tools_key(*dists: str) -> dict[str, str]:
    """{distribution: installed version}, for the key of a step whose output those tools write (torch's
    exporter, onnxslim, ORT's quantizer): after an upgrade the step is redone, so the manifest's `tools`
    name what made every file, not what made the cached ones' successors."""
    return {d: tool_version(d) for d in dists}


def stamp_path(out: Path) -> Path:
    return out.with_name(out.name + STAMP_SUFFIX)


def read_stamp(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads(stamp_path(out).read_text())
    except (OSError, ValueError):
        return None


def up_to_date(out: Path, key: str) -> bool:
    """The output exists, was built from `key`, and has not changed since."""
    stamp = read_stamp(out)
    return bool(stamp and out.is_file() and stamp.get("key") == key and stamp.get("sha256") == file_sha256(out))


def cached_step(step: str, out: str | Path, key: str, build: Callable[[Path], Mapping[str, Any]]) -> Path:
    """Run `build(out) -> details` unless `out` is up to date for `key`; stamp the result."""
    out = Path(out)
    if up_to_date(out, key):
        log.info("%s: %s is up to date (input key %s), skipped", step, out.name, key[:12])
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    details = dict(build(out))
    stamp = {"step": step, "output": out.name, "key": key, "sha256": file_sha256(out), "size": out.stat().st_size,
             "seconds": round(time.perf_counter() - t0, 3), "details": details}
    stamp_path(out).write_text(json.dumps(stamp, indent=2, default=str))
    log.info("%s: wrote %s (%.1f kB) in %.1f s", step, out.name, stamp["size"] / 1e3, stamp["seconds"])
    return out


@dataclass
class Report:
    """What the export did: per network and step, the stamp; plus the gate and the bundle."""

    steps: list[dict[str, Any]] = field(default_factory=list)  # stamps in chain order, with "network"
    summary: dict[str, Any] = field(default_factory=dict)  # bundle size, precision, gate, timings
    wall_s: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds (where an export's minutes go)
    refused: list[dict[str, Any]] = field(default_factory=list)  # INT8 sets the gate refused: {networks, reason}

    def timed(self, phase: str, t0: float) -> None:
        self.wall_s[phase] = round(self.wall_s.get(phase, 0.0) + time.perf_counter() - t0, 1)

    def add(self, network: str, out: Path) -> None:
        stamp = read_stamp(out)
        if stamp:  # one row per output file: a step reached twice (reference and device) is listed once
            self.steps = [s for s in self.steps if (s["network"], s["path"]) != (network, str(out))]
            self.steps.append({"network": network, "path": str(out), **stamp})

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary, "wall_seconds": self.wall_s, "steps": self.steps}


def write_report(report: Report, out_dir: str | Path, images: Sequence[str] = ()) -> tuple[Path, Path]:
    """export_report.json and export_report.md in `out_dir`; the md shows `images` (files beside it)."""
    out_dir = Path(out_dir)
    jpath, mpath = out_dir / "export_report.json", out_dir / "export_report.md"
    jpath.write_text(json.dumps(report.to_json(), indent=2, default=str))
    mpath.write_text(markdown(report, images))
    return jpath, mpath


def markdown(report: Report, images: Sequence[str] = ()) -> str:
    lines = ["# vsdmot export report", ""]
    lines += [f"- **{k}**: {_fmt(v)}" for k, v in report.summary.items()]
    if report.wall_s:
        lines.append(f"- **wall seconds**: {_fmt(report.wall_s)}")
    lines += [line for name in images for line in ("", f"![{name}]({name})")]
    lines += ["", "| network | step | output | size kB | seconds | details |", "|---|---|---|---|---|---|"]
    for s in report.steps:
        lines.append(f"| {s['network']} | {s['step']} | {s['output']} | {s['size'] / 1e3:.1f} | {s['seconds']} "
                     f"| {_fmt(_short(s.get('details', {})))} |")
    return "\n".join(lines) + "\n"


def _short(details: Mapping[str, Any]) -> dict[str, Any]:
    """The details worth a table cell: scalars, short lists and small dicts (parity per output,
    latency). A long dict (e.g. 70 equalised tensor names) becomes its count; the JSON keeps it all."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        if isinstance(v, Mapping) and len(v) > 4:
            out[k] = f"{len(v)} entries (in export_report.json)"
        elif not isinstance(v, (list, tuple)) or len(v) <= 4:
            out[k] = v
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, Iterable) and not isinstance(v, str):
        return ", ".join(_fmt(x) for x in v)
    return str(v)
