"""Step: the accuracy gate. Track held-out sequences with the exported bundle and with the FP32
reference, clean and degraded; refuse when HOTA drops more than `max_hota_drop` points.

The tracking itself is injectable: `EvalFn(bundle_dir, sequence, condition) -> metrics dict`
(HOTA, MOTA, IDF1 as fractions, as `evaluation.metrics.evaluate` returns). The default,
`pipeline_eval`, runs the runtime pipeline (`vsdmot.runtime.pipeline`) on the bundle over each
sequence window, degraded sequences come from the bench's cache (`evaluation.bench`).
The verdict is JSON (`out_path`): per sequence and condition, reference and candidate metrics and
the drop in points; the worst drop; passed; forced. The chain records it in the manifest and
publishes the bundle only when passed or forced (export/bundle.py `publish`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vsdmot import paths
from vsdmot.runtime import code_identity as runtime_code_id
from vsdmot.runtime.bundle import file_sha256

from .report import cached_step, fingerprint

log = logging.getLogger(__name__)
EvalFn = Callable[[Path, str, str], Mapping[str, Any]]
METRICS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")


@dataclass(frozen=True)
class GateConfig:
    max_hota_drop: float = 1.0  # HOTA points (percent) the bundle may lose against FP32, per case
    sequences: tuple[str, ...] = ("PETS09-S2L1:601-795", "TUD-Campus")  # held out: never calibrated or trained on
    conditions: tuple[str, ...] = ("clean", "realesrgan-s3")  # clean, and preset-sSEVERITY degraded
    data_root: str = ""  # where sequences live; "" = $VSDMOT_DATA or ../shared/data beside the repo
    force: bool = False  # publish even when the gate fails (recorded in the manifest)
    seed: int = 0  # degradation seed of the degraded conditions

    def __post_init__(self) -> None:
        if self.max_hota_drop < 0:
            raise ValueError(f"max_hota_drop: expected >= 0 points, got {self.max_hota_drop}")


def bundle_id(bundle_dir: Path) -> str:
    """What identifies a bundle for caching its scores: its sealed manifest."""
    return file_sha256(Path(bundle_dir) / "manifest.json")


def gate_accuracy(candidate: str | Path, cfg: GateConfig, out_path: str | Path, reference: str | Path,
                  eval_fn: EvalFn | None = None) -> Path:
    """Score candidate and reference on every case; write the verdict JSON to `out_path`."""
    candidate, reference = Path(candidate), Path(reference)
    fn = eval_fn or pipeline_eval(cfg)

    def build(out: Path) -> dict[str, Any]:
        cases = [score_case(fn, candidate, reference, s, c) for s in cfg.sequences for c in cfg.conditions]
        verdict = decide(cases, cfg)
        out.write_text(json.dumps(verdict, indent=2))
        return {k: verdict[k] for k in ("passed", "forced", "worst_hota_drop", "reason")}

    key = fingerprint(_content_id(candidate), _content_id(reference), asdict(cfg), getattr(fn, "__name__", "eval"),
                      runtime_code_id())  # a tracker change re-gates
    return cached_step("gate_accuracy", out_path, key, build)


def _content_id(bundle_dir: Path) -> str:
    """Hash of a bundle's files (not the manifest: it changes when the verdict is recorded)."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return fingerprint({n: e["sha256"] for n, e in manifest["files"].items()})


def score_case(fn: EvalFn, candidate: Path, reference: Path, seq: str, cond: str) -> dict[str, Any]:
    ref, cand = dict(fn(reference, seq, cond)), dict(fn(candidate, seq, cond))
    drop = 100.0 * (float(ref["HOTA"]) - float(cand["HOTA"]))
    log.info("gate %s %s: HOTA fp32 %.1f, bundle %.1f (drop %.2f)", seq, cond, 100 * ref["HOTA"],
             100 * cand["HOTA"], drop)
    return {"sequence": seq, "condition": cond, "hota_drop": round(drop, 3),
            "reference": {k: ref[k] for k in METRICS if k in ref}, "bundle": {k: cand[k] for k in METRICS if k in cand}}


def decide(cases: list[dict[str, Any]], cfg: GateConfig) -> dict[str, Any]:
    worst = max(cases, key=lambda c: c["hota_drop"])
    passed = worst["hota_drop"] <= cfg.max_hota_drop
    reason = (f"worst HOTA drop {worst['hota_drop']:.2f} points on {worst['sequence']} {worst['condition']} "
              f"{'<=' if passed else '>'} threshold {cfg.max_hota_drop}")
    return {"passed": passed, "forced": bool(cfg.force and not passed), "threshold_hota_drop": cfg.max_hota_drop,
            "worst_hota_drop": worst["hota_drop"], "reason": reason, "cases": cases}


def data_root(cfg: GateConfig) -> Path:
    return Path(cfg.data_root) if cfg.data_root else paths.data_root()


def split_sequence(spec: str) -> tuple[str, tuple[int, int] | None]:
    """'NAME:A-B' -> ('NAME', (A, B)); 'NAME' -> ('NAME', None)."""
    name, _, rng = spec.partition(":")
    if not rng:
        return name, None
    a, b = (int(v) for v in rng.split("-"))
    return name, (a, b)


def parse_condition(cond: str):
    """'clean' or 'PRESET-sN' -> an evaluation.bench Condition."""
    from vsdmot.evaluation.bench import Condition

    if cond == "clean":
        return Condition()
    preset, _, sev = cond.rpartition("-s")
    if not preset or not sev.isdigit():
        raise ValueError(f"gate condition: expected 'clean' or 'PRESET-sN', got {cond!r}")
    return Condition(preset=preset, severity=int(sev))


def pipeline_eval(cfg: GateConfig, cache_dir: Path | None = None, threads: int = 1) -> EvalFn:
    """The default EvalFn: the runtime pipeline on the bundle, scored by evaluation.metrics."""
    cache = Path(cache_dir or Path.home() / ".cache" / "vsdmot" / "gate")
    memo: dict[tuple[str, str, str], Mapping[str, Any]] = {}

    def run_pipeline(bundle_dir: Path, seq: str, cond: str) -> Mapping[str, Any]:
        k = (_content_id(Path(bundle_dir)), seq, cond)
        if k not in memo:
            memo[k] = _track_and_score(bundle_dir, seq, cond, cfg, cache, threads)
        return memo[k]

    return run_pipeline


def _track_and_score(bundle_dir: Path, seq: str, cond: str, cfg: GateConfig, cache: Path, threads: int):
    from vsdmot.evaluation.bench import prepare_sequence
    from vsdmot.evaluation.metrics import evaluate

    name, window = split_sequence(seq)
    seq_dir = prepare_sequence(data_root(cfg) / name, parse_condition(cond), cache / "sequences", cfg.seed,
                               progress=False)
    span = f"_{window[0]}-{window[1]}" if window else ""  # 401-600 and 601-795 are different tracks
    tracks = f"{_content_id(bundle_dir)[:16]}-{runtime_code_id()}"  # same files and per-frame code, same tracks
    res = cache / "results" / tracks / cond / f"{name}{span}.txt"
    if not res.is_file():
        track_sequence(bundle_dir, seq_dir, window, res, threads)
    return evaluate(seq_dir, res, frames=window)


def track_sequence(bundle_dir: Path, seq_dir: Path, window, res_file: Path, threads: int = 1) -> None:
    """Run the runtime pipeline from `bundle_dir` over the sequence window; write MOT rows."""
    import dataclasses

    from vsdmot.runtime.bundle import load_bundle
    from vsdmot.runtime.config import RunConfig
    from vsdmot.runtime.mot import format_result_rows
    from vsdmot.runtime.pipeline import build_pipeline, step
    from vsdmot.runtime.sources import open_sequence

    seq = open_sequence(seq_dir)
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, backend="onnxruntime", threads=threads))
    p = build_pipeline(load_bundle(bundle_dir), cfg, seq.info.frame_rate)
    first, last = window or (1, seq.info.length)
    lines, src = [], seq.frames()
    try:
        for frame in src:
            if frame.index > last:
                break
            if frame.index >= first:
                t = step(frame, p).tracks
                lines.append(format_result_rows(frame.index, t.track_id, t.xywh, t.score))
    finally:
        src.close()
        p.close()
    res_file.parent.mkdir(parents=True, exist_ok=True)
    res_file.write_text("".join(lines))
