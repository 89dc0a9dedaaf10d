"""The accuracy gate's noise floor: how far harmless candidates move the gate's cases, and how often
each gate rule would refuse them. Train-side windows only (docs/export_measurements.md "The gate's noise floor").

    python -m vsdmot.export.noise_floor run [--reference DIR] [--candidates null-fp16 null-n1 null-n2 ...]
        [--windows PETS09-S2L1:1-200 ...] [--conditions clean realesrgan-s3 ...] [--out runs/noise_floor]
        [--cache DIR] [--threads 1] [--gate-size 2] [--held-out]
    python -m vsdmot.export.noise_floor summarize FILE.jsonl [FILE.jsonl ...] [--reference-name default] [--out DIR]

Candidates are copies of the reference bundle with perturbed ONNX constants, resealed
(`export.bundle.rewrite_copy`) so the runtime loads them:
    null-fp16   every float32 constant rounded to FP16 (the gate's own control, `accuracy_gate.null_bundle`)
    null-nSEED  every numeric float constant of all three networks x (1 + 5e-4 N(0, 1)), seed SEED
                (FP16's relative rounding error is 4.9e-4; Resize scales and shapes are left alone)
    harm-dPCT   the detector's weights (ndim >= 2) x (1 + PCT/100 N(0, 1)), e.g. harm-d05: 5 %
    DIR         an existing bundle (e.g. a pruned export), scored as it is
Every (bundle, window, condition) is scored by the gate's own `pipeline_eval` (so the gate's track
cache is shared) and appended as one JSON line to OUT/cases.jsonl: a killed run resumes where it
stopped. The summary (OUT/summary.md, OUT/summary.json) gives the per-case HOTA drops and, for
every rule in `accuracy_gate.RULES`, the verdicts of emulated gates (every `gate_size` windows of
a candidate, as the held-out gate has two sequences), scored by the gate's own `decide`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsdmot.runtime import code_identity as runtime_code_id
from vsdmot.runtime.bundle import DEFAULT_BUNDLE, MANIFEST
from vsdmot.splits import touches_held_out

from . import accuracy_gate as ag
from .bundle import NETWORKS

log = logging.getLogger(__name__)
TRAIN_WINDOWS = ("PETS09-S2L1:1-200", "PETS09-S2L1:201-400", "PETS09-S2L1:401-600")
NUMERIC_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Sub", "BatchNormalization", "LayerNormalization"}
HARM_SEED = 3  # the seed harm-d02/05/10 were drawn with (2026-11-24)


@dataclass(frozen=True)
class Candidate:
    """How to make one candidate bundle from the reference."""

    tag: str  # its name in the tables and its folder under OUT/bundles
    networks: tuple[str, ...] = NETWORKS  # roles whose ONNX constants are perturbed
    rel: float = 0.0  # relative noise sd; 0 = FP16 rounding (the gate's null bundle)
    seed: int = 0  # noise seed (network i draws from seed * 10 + i)
    min_ndim: int = 0  # perturb only constants with at least this many dims (2: weights, not biases)
    path: str = ""  # an existing bundle, scored as it is (nothing is built)


def parse_candidate(spec: str, noise: float) -> Candidate:
    """'null-fp16', 'null-nSEED', 'harm-dPCT' or an existing bundle folder."""
    if spec == "null-fp16":
        return Candidate(spec)
    if m := re.fullmatch(r"null-n(\d+)", spec):
        return Candidate(spec, rel=noise, seed=int(m[1]))
    if m := re.fullmatch(r"harm-d(\d+)", spec):
        return Candidate(spec, ("detector",), int(m[1]) / 100, HARM_SEED, 2)
    if (Path(spec) / MANIFEST).is_file():
        return Candidate(Path(spec).name, path=spec)
    raise ValueError(f"candidate: expected null-fp16, null-nSEED, harm-dPCT or a bundle folder (with {MANIFEST}), "
                     f"got {spec!r}")


@dataclass(frozen=True)
class NoiseFloorConfig:
    reference: str = ""  # the FP32 reference bundle ("" = runtime/assets/default)
    candidates: tuple[str, ...] = ("null-fp16", "null-n1", "null-n2")  # parse_candidate's spellings
    windows: tuple[str, ...] = TRAIN_WINDOWS  # NAME:A-B windows scored (train side unless held_out)
    conditions: tuple[str, ...] = ("clean", *ag.DEGRADED)  # the gate's condition names
    out_dir: str = "runs/noise_floor"  # bundles/, cases.jsonl, summary.md, summary.json
    cache_dir: str = ""  # track and degraded-sequence cache ("" = the gate's, ~/.cache/vsdmot/gate)
    data_root: str = ""  # where sequences live ("" = $VSDMOT_DATA or ../shared/data)
    threads: int = 1  # onnxruntime threads per network
    gate_size: int = 2  # windows per emulated gate (the held-out gate scores 2 sequences; at most all windows)
    max_hota_drop: float = 1.0  # threshold the rules are judged against (HOTA points)
    noise: float = 5e-4  # relative noise sd of null-nSEED
    held_out: bool = False  # allow evaluation frames (only to measure once, after a rule is chosen)

    def __post_init__(self) -> None:
        for c in self.conditions:
            ag.parse_condition(c)  # ValueError naming the condition
        for c in self.candidates:
            parse_candidate(c, self.noise)
        check_windows(self.windows, self.held_out)
        if self.gate_size < 1 or self.threads < 1:
            raise ValueError(f"expected gate_size >= 1 and threads >= 1, got {self.gate_size} and {self.threads}")

    @property
    def reference_dir(self) -> Path:
        return Path(self.reference) if self.reference else DEFAULT_BUNDLE


def check_windows(windows: Sequence[str], held_out: bool) -> None:
    """ValueError for a malformed window, or one touching evaluation frames unless `held_out`."""
    if not windows:
        raise ValueError("windows: expected at least one NAME:A-B window")
    for w in windows:
        try:
            name, span = ag.split_sequence(w)
        except ValueError:
            raise ValueError(f"window: expected NAME or NAME:A-B, got {w!r}") from None
        if not held_out and touches_held_out(name, span):
            raise ValueError(f"window {w}: touches held-out evaluation frames (PETS09-S2L1 601-795, TUD-Campus); "
                             "the noise floor is measured train side. Pass --held-out only for the one "
                             "measurement after the rule is chosen")


# -- candidate bundles --------------------------------------------------------------------------
def build_candidate(c: Candidate, reference: Path, out: Path) -> Path:
    """The candidate's bundle folder (built into `out` unless it is an existing bundle)."""
    if c.path:
        return Path(c.path)
    if c.rel == 0.0:
        return ag.null_bundle(reference, out)
    return noise_bundle(reference, out, c)


def noise_bundle(reference: Path, out: Path, c: Candidate) -> Path:
    """Copy `reference`, multiply the constants of `c.networks` by (1 + c.rel N(0, 1)), reseal."""
    from .bundle import rewrite_copy

    files = json.loads((reference / MANIFEST).read_text())["files"]
    roles = {e.get("role"): n for n, e in files.items() if n.endswith(".onnx")}
    edits = {roles[role]: functools.partial(_perturb, rel=c.rel, seed=c.seed * 10 + i, min_ndim=c.min_ndim)
             for i, role in enumerate(c.networks)}
    return rewrite_copy(reference, out, edits)


def _perturb(path: Path, rel: float, seed: int, min_ndim: int) -> None:
    """Relative Gaussian noise on the float32 constants that feed numeric ops (not Resize scales, shapes)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model, rng = onnx.load(str(path)), np.random.default_rng(seed)
    structural = {i for n in model.graph.node if n.op_type not in NUMERIC_OPS for i in n.input}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.ndim >= min_ndim and a.size > 1 and t.name not in structural:
            noisy = a * (1 + rel * rng.standard_normal(a.shape))  # (same shape), float64 -> float32
            t.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), t.name))
    onnx.save(model, str(path))


def prepare_bundles(cfg: NoiseFloorConfig, progress: bool = True) -> dict[str, Path]:
    """tag -> bundle folder: the reference first, then every candidate (built under OUT/bundles)."""
    from tqdm import tqdm

    ref = cfg.reference_dir
    if not (ref / MANIFEST).is_file():
        raise ValueError(f"reference: expected a bundle ({MANIFEST}) at {ref}, found none")
    out = {ref.name: ref}
    for spec in tqdm(cfg.candidates, desc="bundles", unit="bundle", disable=not progress):
        c = parse_candidate(spec, cfg.noise)
        if c.tag in out:
            raise ValueError(f"candidate {spec!r}: its name {c.tag!r} is taken (the reference's or another's)")
        out[c.tag] = build_candidate(c, ref, Path(cfg.out_dir) / "bundles" / c.tag)
    return out


# -- scoring (resumable) ------------------------------------------------------------------------
def record_key(rec: Mapping[str, Any]) -> tuple[str, str, str]:
    return rec["bundle"], rec["window"], rec["cond"]


def load_records(paths: Iterable[Path]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(bundle, window, condition) -> its JSON line; a later line replaces an earlier one."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"records: expected a JSON-lines file at {p}, found none")
        for line in Path(p).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                out[record_key(rec)] = rec
    return out


def score_all(cfg: NoiseFloorConfig, bundles: Mapping[str, Path], fn: ag.EvalFn, progress: bool = True) -> Path:
    """Append one line per (bundle, window, condition) not already in OUT/cases.jsonl for these files and code."""
    from tqdm import tqdm

    out = Path(cfg.out_dir) / "cases.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {tag: ag.bundle_id(d)[:16] for tag, d in bundles.items()}
    code = runtime_code_id()
    done = {k for k, r in (load_records([out]) if out.is_file() else {}).items()
            if r.get("bundle_id") == stamp.get(k[0]) and r.get("runtime") == code}
    todo = [(t, w, c) for c in cfg.conditions for t in bundles for w in cfg.windows if (t, w, c) not in done]
    log.info("noise floor: %d cases done, %d to score", len(done), len(todo))
    for tag, w, c in tqdm(todo, desc="cases", unit="case", disable=not progress):
        t0 = time.time()
        m = fn(bundles[tag], w, c)
        rec = {"bundle": tag, "window": w, "cond": c, "s": round(time.time() - t0, 1),
               **{k: float(m[k]) for k in ag.METRICS if k in m}, "bundle_id": stamp[tag], "runtime": code}
        with out.open("a") as f:  # one line per case: a kill loses at most the case being scored
            f.write(json.dumps(rec) + "\n")
    return out


# -- summary --------------------------------------------------------------------------------------
def case_drops(recs: Mapping[tuple[str, str, str], Mapping[str, Any]], ref: str) -> list[dict[str, Any]]:
    """Every candidate case the reference also has, as the gate's `score_case` writes it (drop in points)."""
    lookup = lambda b, s, c: recs[(b.name, s, c)]  # noqa: E731  an EvalFn over the records
    with _quiet(ag.log):  # score_case logs each case; these were logged when scored
        return [{**ag.score_case(lookup, Path(b), Path(ref), w, c), "candidate": b}
                for (b, w, c) in recs if b != ref and (ref, w, c) in recs]


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def emulated_gates(cases: list[dict[str, Any]], gate_size: int, threshold: float = 1.0) -> list[dict[str, Any]]:
    """Per candidate, every `gate_size` windows (over the conditions every one of them has):
    the value and verdict of each rule in `accuracy_gate.RULES`, by the gate's own `decide`."""
    gates = []
    for b in dict.fromkeys(c["candidate"] for c in cases):
        mine = [c for c in cases if c["candidate"] == b]
        windows = sorted({c["sequence"] for c in mine})
        for combo in itertools.combinations(windows, min(gate_size, len(windows))):  # a candidate may lack a window
            conds = set.intersection(*({c["condition"] for c in mine if c["sequence"] == w} for w in combo))
            sub = [c for c in mine if c["sequence"] in combo and c["condition"] in conds]
            gates.append({"bundle": b, "windows": list(combo), "conditions": sorted(conds), "rules": {}})
            for rule in ag.RULES:
                v = ag.decide(sub, ag.GateConfig(rule=rule, max_hota_drop=threshold))
                gates[-1]["rules"][rule] = {"value": v["gated_hota_drop"], "passed": v["passed"]}
    return gates


def rule_summary(gates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per rule: how many null gates (candidates named null-*) it refuses, and its largest null value."""
    nulls = [g for g in gates if g["bundle"].startswith("null")]
    return {rule: {"null_gates": len(nulls), "null_refused": sum(not g["rules"][rule]["passed"] for g in nulls),
                   "null_largest": max((g["rules"][rule]["value"] for g in nulls), default=None)}
            for rule in ag.RULES}


def summarize(recs: Mapping[tuple[str, str, str], Mapping[str, Any]], ref: str, gate_size: int,
              threshold: float = 1.0) -> dict[str, Any]:
    if not any(k[0] == ref for k in recs):
        raise ValueError(f"summary: no records of the reference {ref!r} (bundles: {sorted({k[0] for k in recs})})")
    cases = case_drops(recs, ref)
    gate_size = min(gate_size, len({k[1] for k in recs}))  # one window: each gate is that window
    gates = emulated_gates(cases, gate_size, threshold) if cases else []
    return {"reference": ref, "gate_size": gate_size, "threshold_hota_drop": threshold,
            "cases": [{k: c[k] for k in ("candidate", "sequence", "condition", "hota_drop")} for c in cases],
            "gates": gates, "rules": rule_summary(gates)}


def drops_markdown(summary: Mapping[str, Any]) -> str:
    """Per-case HOTA drop (points, positive = the candidate is worse): a row per (candidate, window)."""
    cases = summary["cases"]
    conds = list(dict.fromkeys(c["condition"] for c in cases))
    cell = {(c["candidate"], c["sequence"], c["condition"]): c["hota_drop"] for c in cases}
    rows = [f"| candidate | window | {' | '.join(conds)} |", "|---|---|" + "---|" * len(conds)]
    for b, w in dict.fromkeys((c["candidate"], c["sequence"]) for c in cases):
        vals = [f"{cell[(b, w, c)]:.2f}" if (b, w, c) in cell else "" for c in conds]
        rows.append(f"| {b} | {w} | {' | '.join(vals)} |")
    return "\n".join(rows)


def rules_markdown(summary: Mapping[str, Any]) -> str:
    """A row per emulated gate: each rule's value (bold: refused); then the null counts per rule."""
    rules = list(ag.RULES)
    rows = [f"| candidate | windows | {' | '.join(rules)} |", "|---|---|" + "---|" * len(rules)]
    for g in summary["gates"]:
        vals = [_bold(g["rules"][r]["value"], not g["rules"][r]["passed"]) for r in rules]
        rows.append(f"| {g['bundle']} | {' + '.join(g['windows'])} | {' | '.join(vals)} |")
    s = summary["rules"]
    n = s[rules[0]]["null_gates"] if rules else 0
    rows.append(f"| **null refused (of {n})** | | {' | '.join(str(s[r]['null_refused']) for r in rules)} |")
    largest = [f"{s[r]['null_largest']:.2f}" if s[r]["null_largest"] is not None else "" for r in rules]
    rows.append(f"| largest null value | | {' | '.join(largest)} |")
    return "\n".join(rows)


def _bold(x: float, on: bool) -> str:
    return f"**{x:.2f}**" if on else f"{x:.2f}"


def write_summary(summary: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """summary.md, summary.json and the picture of it, summary.png."""
    from .noise_floor_plot import plot_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_summary(summary, out_dir / "summary.png", ag.GateConfig().max_case_drop)
    md = (f"## Per-case HOTA drop vs {summary['reference']} (points)\n\n{drops_markdown(summary)}\n\n"
          f"## Rules on emulated gates ({summary['gate_size']} windows each; threshold "
          f"{summary['threshold_hota_drop']})\n\n{rules_markdown(summary)}\n")
    (out_dir / "summary.md").write_text(md)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return out_dir / "summary.md", out_dir / "summary.json"


# -- the command ----------------------------------------------------------------------------------
def run_study(cfg: NoiseFloorConfig, fn: ag.EvalFn | None = None, progress: bool = True) -> dict[str, Any]:
    """Build the candidates, score what is not scored yet, summarise OUT/cases.jsonl."""
    for w in cfg.windows:
        seq = ag.data_root(ag.GateConfig(data_root=cfg.data_root)) / ag.split_sequence(w)[0]
        if not seq.is_dir():
            raise ValueError(f"window {w}: expected the sequence folder {seq}, found none")
    bundles = prepare_bundles(cfg, progress)
    gate = ag.GateConfig(sequences=cfg.windows, conditions=cfg.conditions, data_root=cfg.data_root)
    fn = fn or ag.pipeline_eval(gate, Path(cfg.cache_dir) if cfg.cache_dir else None, cfg.threads)
    recs = load_records([score_all(cfg, bundles, fn, progress)])
    wanted = {(t, w, c) for t in bundles for w in cfg.windows for c in cfg.conditions}
    return summarize({k: r for k, r in recs.items() if k in wanted}, cfg.reference_dir.name, cfg.gate_size,
                     cfg.max_hota_drop)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vsdmot.export.noise_floor", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = NoiseFloorConfig()
    r = sub.add_parser("run", help="build candidates, score them and the reference, summarise")
    r.add_argument("--reference", default="", metavar="DIR", help="reference bundle (default runtime/assets/default)")
    r.add_argument("--candidates", nargs="+", default=list(d.candidates), metavar="SPEC",
                   help="null-fp16, null-nSEED, harm-dPCT or a bundle folder")
    r.add_argument("--windows", nargs="+", default=list(d.windows), metavar="NAME:A-B", help="train-side windows")
    r.add_argument("--conditions", nargs="+", default=list(d.conditions), metavar="COND", help="clean, PRESET-sN ...")
    r.add_argument("--out", default=d.out_dir, help="bundles/, cases.jsonl, summary.md, summary.json")
    r.add_argument("--cache", default="", help="track cache (default: the gate's, ~/.cache/vsdmot/gate)")
    r.add_argument("--data-root", default="", help="sequences (default $VSDMOT_DATA or ../shared/data)")
    r.add_argument("--threads", type=int, default=1, help="onnxruntime threads per network")
    r.add_argument("--held-out", action="store_true", help="allow evaluation frames (the one measurement after choosing)")
    r.set_defaults(func=_run)
    s = sub.add_parser("summarize", help="summarise JSON-lines files of earlier runs")
    s.add_argument("records", nargs="+", type=Path, metavar="FILE.jsonl")
    s.add_argument("--reference-name", default=DEFAULT_BUNDLE.name, help="the reference's name in the records")
    s.add_argument("--conditions", nargs="+", metavar="COND", help="only these conditions (default: all recorded)")
    s.add_argument("--out", type=Path, help="write summary.md and summary.json here (default: print only)")
    s.set_defaults(func=_summarize)
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    for q in (r, s):
        q.add_argument("--gate-size", type=int, default=d.gate_size, help="windows per emulated gate")
        q.add_argument("--max-hota-drop", type=float, default=d.max_hota_drop, help="threshold, HOTA points")
    return p


def _run(a: argparse.Namespace) -> int:
    cfg = NoiseFloorConfig(reference=a.reference, candidates=tuple(a.candidates), windows=tuple(a.windows),
                           conditions=tuple(a.conditions), out_dir=a.out, cache_dir=a.cache, data_root=a.data_root,
                           threads=a.threads, gate_size=a.gate_size, max_hota_drop=a.max_hota_drop,
                           held_out=a.held_out)
    summary = run_study(cfg, progress=a.progress)
    md, js = write_summary(summary, Path(cfg.out_dir))
    print(md.read_text() + f"\nWrote {md}, {js} and {Path(cfg.out_dir) / 'cases.jsonl'}")
    return 0


def _summarize(a: argparse.Namespace) -> int:
    if a.gate_size < 1:
        raise ValueError(f"--gate-size: expected >= 1, got {a.gate_size}")
    recs = {k: r for k, r in load_records(a.records).items() if not a.conditions or k[2] in a.conditions}
    summary = summarize(recs, a.reference_name, a.gate_size, a.max_hota_drop)
    if a.out:
        md, _ = write_summary(summary, a.out)
        print(md.read_text())
    else:
        print(f"{drops_markdown(summary)}\n\n{rules_markdown(summary)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from vsdmot._cli import run_main

    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
