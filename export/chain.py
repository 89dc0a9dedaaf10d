"""The export driver: calls the steps in order, with progress bars and one log line per step.

    fp32 reference:  to_onnx -> simplify -> parity(torch)                      -> write_bundle
    device bundle:   prune -> recover -> to_onnx -> simplify -> parity(torch)
                     -> quantize -> qdq_check -> parity(fp32) -> write_bundle (staging)
                     -> gate_accuracy (vs the fp32 reference bundle) -> publish (or refuse)

Every step is `(artifact, cfg, out_path) -> out_path` in its own module and skips itself when
its output is up to date (export/report.py). Intermediates live in a work directory
(`$VSDMOT_EXPORT_CACHE` or ~/.cache/vsdmot/export/<out name>-<hash of out path>), so a re-run
after a failure or with another precision redoes only what changed. Networks come from
`export/sources.py`: the shipped weights (models/weights/) or CHECKPOINT.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsdmot.runtime.bundle import MANIFEST, file_sha256
from vsdmot.runtime.yolox import size_text

from .accuracy_gate import EvalFn, GateConfig, gate_accuracy
from .bundle import NETWORKS, BundleConfig, BundleContents, BundleFile, publish, record_gate, write_bundle
from .det_agreement import detection_agreement
from .defaults import DEFAULT_METHOD, DEFAULT_PRUNE, TARGETS
from .det_rounds import NEAR_CAMERA_F1, DetectionRoundsConfig
from .gate_plot import plot_gate
from .legacy_trt import legacy_int8_engines
from .parity import FP32, INT8, onnx_runner, parity
from .prune import PruneConfig, load_module, prune
from .qdq_check import QdqCheckConfig, qdq_check
from .quantize import METHODS, QuantConfig, quantize
from .recover import RecoverConfig, recover
from .report import Report, fingerprint, write_report
from .simplify import SimplifyConfig, simplify
from .sources import Sources, calibration_feeds, feeds_id, load_sources, parity_feeds, parity_frames, with_detector_input
from .to_onnx import OnnxConfig, TorchNet, to_onnx

if TYPE_CHECKING:  # imported where a set is built (export/sources.py), not for every export
    from vsdmot.calibration.calibset import CalibSetConfig

log = logging.getLogger(__name__)
SELECT_SEQUENCES = ("PETS09-S2L1:401-600",)  # train side (calibration frames), before the gate's 601-795


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "int8"  # int8 | fp16 (FP32 ONNX, engine built in FP16) | fp32
    prune: float | None = None  # channel ratio; None = DEFAULT_PRUNE for int8/fp16, 0 for fp32
    method: str = DEFAULT_METHOD  # minmax | entropy | percentile | auto (chosen by the gate's HOTA)
    target: str = "onnx"  # onnx (ORT + TensorRT from Q/DQ) | tensorrt (on the device: legacy-calibrated INT8 engines
    # on TensorRT < 10.1, then every engine prebuilt) | torch-tensorrt (the torch networks compiled by Torch-TensorRT
    # on the device after publishing, cached beside the engines: export/torch_trt.py)
    engine_cache: str = ""  # where --target tensorrt / torch-tensorrt cache what they build ("" = the runtime's
    # default_engine_cache(); a service reads its config's [pipeline] engine_cache, /var/cache/vsdmot/engines)
    calib: tuple[str, ...] = ()  # calibration sources; () = sources.default_calib_sources()
    work_dir: str = ""  # intermediates; "" = default_work_dir(out)
    recover: RecoverConfig = RecoverConfig()  # distillation after pruning; max_seconds: total CPU s, shared by MACs
    calibset: CalibSetConfig | None = None  # None = its defaults
    gate: GateConfig = GateConfig()  # accuracy gate (force lives here)
    progress: bool = True  # tqdm progress bars
    calib_quality: str = "auto"  # calibration-set stratification: gate (quality.json) | proxy (severity) | auto
    int8_min_cosine: float = 0.0  # a network whose INT8 outputs fall below this cosine vs FP32 stays FP32 (0: the gate decides)
    int8_fallback: bool = True  # on a failed gate, put INT8 networks back to FP32 one by one (worst parity first)
    select: tuple[str, ...] = SELECT_SEQUENCES  # --method auto chooses on these (train side, never the gate's)
    detection: DetectionRoundsConfig = DetectionRoundsConfig()  # INT8 detector: first layers float until its
    # detections agree with FP32 at min_f1 on calibration feeds; below it after the rounds it stays FP32 (off by default)
    keep_fp32: tuple[str, ...] = ()  # networks that stay FP32 in an int8 bundle (--keep-fp32; e.g. the detector
    # for near-camera scenes, docs/export_measurements.md "Unseen degradations")
    input_size: tuple[int, int] | None = None  # detector (H, W), multiples of 32; None = as trained (416x416).
    # Every bundle of the export (the FP32 reference the gate compares with included) gets this input.
    near_calibration: bool = False  # the detector's calibration feeds also hold near-pedestrian crops when it is not
    # pruned (a pruned one gets them unless --calib names its own frames); measured, no train-side gain
    # (docs/export_measurements.md), so off

    def __post_init__(self) -> None:
        clash = [(a, b) for a in self.select for b in self.gate.sequences if windows_overlap(a, b)]
        if clash:
            raise ValueError(f"method selection sequences must not overlap the gate's held-out ones, got {clash}")
        if self.precision not in ("int8", "fp16", "fp32"):
            raise ValueError(f"precision: expected int8, fp16 or fp32, got {self.precision!r}")
        if self.method not in (*METHODS, "auto"):
            raise ValueError(f"--method: expected one of {[*METHODS, 'auto']}, got {self.method!r}")
        if self.target not in TARGETS:
            raise ValueError(f"--target: expected one of {list(TARGETS)}, got {self.target!r}")
        if set(self.keep_fp32) - set(NETWORKS):
            raise ValueError(f"--keep-fp32: expected names from {list(NETWORKS)}, got {list(self.keep_fp32)}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 64
                                            or any(v % 32 for v in self.input_size)):
            raise ValueError(f"--input-size: expected (H, W), multiples of 32 and at least 64, got {self.input_size}")
        if self.calib_quality not in ("auto", "gate", "proxy"):  # a typo behaved as "gate"
            raise ValueError(f"--calib-quality: expected auto, gate or proxy, got {self.calib_quality!r}")
        if not 0 <= self.int8_min_cosine <= 1:  # NaN fails too
            raise ValueError(f"int8_min_cosine: expected a cosine in [0, 1], got {self.int8_min_cosine!r}")
        if self.prune is not None and not 0 <= self.prune < 0.95:
            raise ValueError(f"--prune: expected a ratio in [0, 0.95), got {self.prune!r}")
        if self.engine_cache and self.target == "onnx":
            raise ValueError("--engine-cache: only --target tensorrt or torch-tensorrt build anything to cache; "
                             "with --target onnx the run builds its engines into its own [pipeline] engine_cache")
        object.__setattr__(self, "engine_cache", os.path.expanduser(self.engine_cache))  # frozen: set while building

    @property
    def ratio(self) -> float:
        if self.prune is not None:
            return self.prune
        return 0.0 if self.precision == "fp32" else DEFAULT_PRUNE


def default_work_dir(out: Path) -> Path:
    base = Path(os.environ.get("VSDMOT_EXPORT_CACHE") or Path.home() / ".cache" / "vsdmot" / "export")
    return base / f"{out.name}-{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:10]}"


def export(cfg: ExportConfig, out: str | Path, checkpoint: str | Path | None = None,
           sources: Sources | None = None, eval_fn: EvalFn | None = None) -> Path:
    """Run the chain; return the published bundle directory (BundleError when the gate refuses).
    A failure part-way removes the staging directory: nothing loadable is left behind."""
    out = Path(out)
    work = Path(cfg.work_dir) if cfg.work_dir else default_work_dir(out)
    with work_lock(work):
        sweep_killed(out)
        try:
            return _export(cfg, out, work, checkpoint, sources, eval_fn)
        except BaseException:
            shutil.rmtree(staging_dir(out), ignore_errors=True)
            raise


@contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """One export per work directory at a time. Two would overwrite each other's FP32 reference
    (work/reference) while gating, and one gate would compare against the other's bundle (seen:
    an INT8 416x320 export gated against a concurrent 416x256 reference). ValueError if taken."""
    from vsdmot.runtime.locks import Claimed, claim, release

    work.mkdir(parents=True, exist_ok=True)
    try:
        fd = claim(work / ".lock")  # released on exit, or by the kernel when the process dies
    except Claimed as e:
        raise ValueError(f"--work-dir {work} is in use by another vsdmot-export ({e.holder or 'pid ?'}); "
                         f"give each concurrent export its own --work-dir") from None
    try:
        yield
    finally:
        release(fd, work / ".lock")


def _export(cfg: ExportConfig, out: Path, work: Path, checkpoint, sources: Sources | None,
            eval_fn: EvalFn | None) -> Path:
    sources = with_detector_input(sources or load_sources(checkpoint), cfg.input_size)
    report = Report()
    frames = parity_frames()
    ref_files = {name: torch_to_onnx(net, work / "fp32" / name, report, feeds=parity_feeds(net, frames))
                 for name, net in sources.nets.items()}
    reference = stage_bundle(sources, ref_files, "fp32", work / "reference",
                             {"prune": 0.0, "detector_input": export_info(cfg)["detector_input"]}, {})
    if cfg.precision == "fp32" and cfg.ratio == 0:
        verdict = {"passed": True, "forced": False, "reason": "the FP32 reference: nothing to compare against"}
        published = finish(reference, out, {"reference": True}, verdict, report, cfg, work, copy=True)
        return with_programs(published, cfg, sources.nets)
    t0 = time.perf_counter()
    feeds = network_feeds(sources, cfg, work, reference)
    report.timed("calibration feeds", t0)
    t0 = time.perf_counter()
    files, calib, fp32_files, nets = device_files(sources, cfg, work, feeds, report, reference, eval_fn)
    report.timed("prune + recover + quantise", t0)
    t0 = time.perf_counter()
    stage, verdict = gated(sources, files, cfg, out, work, calib, reference, eval_fn)
    # --force publishes what was exported: a fallback would change the bundle asked for (and, when
    # pruning is what fails, gate three more bundles that cannot pass)
    for name in fallback_order(files) if cfg.int8_fallback and not cfg.gate.force else []:
        if verdict["passed"]:
            break
        log.warning("gate: %s; trying again with %s in FP32", verdict["reason"], name)
        report.refused.append({"networks": network_precisions(files), "reason": verdict["reason"]})
        files = {**files, name: fp32_files[name]}
        stage, verdict = gated(sources, files, cfg, out, work, calib, reference, eval_fn)
    report.timed("accuracy gate", t0)
    if cfg.target == "tensorrt" and cfg.precision == "int8" and (verdict["passed"] or cfg.gate.force):
        # TensorRT < 10.1; before publishing: a failure leaves --out as it was (engines are keyed by the
        # ONNX files' sha256, unchanged by publishing)
        legacy_int8_engines(stage, fp32_files, feeds, work, cfg.engine_cache or None)
    return with_programs(finish(stage, out, summarize(verdict), verdict, report, cfg, work), cfg, nets)


def with_programs(published: Path, cfg: ExportConfig, nets: Mapping[str, TorchNet]) -> Path:
    """`--target torch-tensorrt`: compile the published bundle's torch networks on this device
    (export/torch_trt.py; after publishing, as the engines of `--target tensorrt`: the bundle is
    valid whatever the compiler does)."""
    if cfg.target == "torch-tensorrt":
        from .torch_trt import compile_programs

        compile_programs(published, nets, cfg.engine_cache or None)
    return published


def gated(sources, files, cfg, out, work, calib, reference, eval_fn) -> tuple[Path, dict]:
    """Stage a bundle from `files` and run the accuracy gate on it: (staging dir, verdict)."""
    stage = stage_bundle(sources, files, bundle_precision(cfg.precision, files), staging_dir(out), export_info(cfg),
                         calib)
    kept = "+".join(n for n, prec in network_precisions(files).items() if prec == "fp32") or "none"
    gate_json = gate_accuracy(stage, cfg.gate, work / f"gate-{cfg.precision}-p{cfg.ratio:g}-fp32-{kept}.json",
                              reference, eval_fn)
    return stage, json.loads(gate_json.read_text())


def bundle_precision(asked: str, files: Mapping[str, Path]) -> str:
    """The manifest's precision: "int8" only while some network is INT8 (an --int8 export whose gate
    put every network back to FP32 is an FP32 bundle, and says so)."""
    return "fp32" if asked == "int8" and "int8" not in network_precisions(files).values() else asked


def network_precisions(files: Mapping[str, Path]) -> dict[str, str]:
    """Network -> "int8" or "fp32": what a set of device files holds (INT8 files are named `*.int8-<method>.onnx`)."""
    return {name: "int8" if ".int8-" in p.name else "fp32" for name, p in sorted(files.items())}


def fallback_order(files: Mapping[str, Path]) -> list[str]:
    """INT8 networks, the one whose INT8 outputs agree least with FP32 first."""
    def worst(path: Path) -> float:
        pj = path.with_name(path.name.replace(".onnx", ".parity.json"))
        return min(r["cosine"] for r in json.loads(pj.read_text())["outputs"].values()) if pj.is_file() else 0.0

    return sorted((n for n, p in files.items() if ".int8-" in p.name), key=lambda n: worst(files[n]))


def torch_to_onnx(net: TorchNet, base: Path, report: Report, feeds=None) -> Path:
    """to_onnx -> simplify -> parity against the torch module; returns the simplified ONNX."""
    raw = to_onnx(net, OnnxConfig(), base.with_suffix(".onnx"))
    sim = simplify(raw, SimplifyConfig(), base.with_suffix(".sim.onnx"))
    ref_feeds = feeds if feeds is not None else [{k: v.numpy() for k, v in net.inputs.items()}]
    # the torch module is named by the ONNX it exported to: same weights, same id, whatever the work dir
    par = parity(sim, FP32, base.with_suffix(".parity.json"), net.run, f"torch:{file_sha256(raw)[:8]}", ref_feeds)
    for p in (raw, sim, par):
        report.add(net.name, p)
    return sim


def network_feeds(sources: Sources, cfg: ExportConfig, work: Path, reference: Path) -> dict[str, Sequence[Mapping]]:
    """Calibration/distillation feeds per network: overrides, else from the degraded calibration set."""
    (work / "calibset.json").unlink(missing_ok=True)  # an earlier export's set: written again when one is built
    feeds = dict(sources.feeds)  # only the networks that prune (distillation) or quantise (calibration)
    need = [n for n, net in sources.nets.items()
            if (cfg.precision == "int8" and n not in cfg.keep_fp32) or (cfg.ratio and net.prune_roots)]
    missing = [n for n in need if n not in feeds]
    if not missing:
        return feeds
    feeds.update(calibration_feeds(sources, missing, cfg, work, reference))
    return feeds


def device_files(sources, cfg, work, feeds, report, reference, eval_fn) -> tuple[dict[str, Path], dict, dict, dict]:
    """Per network: prune/recover when asked, ONNX, then INT8 when asked. Returns (files, calibration,
    the FP32 files (pruned when pruned), the torch networks those were exported from)."""
    from tqdm import tqdm

    files, calib, nets = {}, {"method": None, "sources": list(cfg.calib), "frames": {}}, {}
    budgets, frames = recover_budgets(sources.nets, cfg), parity_frames()
    for name, net in tqdm(sources.nets.items(), desc="export: networks", disable=not cfg.progress):
        base = work / (f"p{cfg.ratio:g}" if name in budgets else "fp32") / name
        net = nets[name] = pruned(net, cfg, base, feeds.get(name), report, budgets.get(name))
        # unpruned: the reference's own files and feeds, so every step (parity too) is reused, not redone
        # against other feeds into the same file; pruned: its calibration feeds
        ref_feeds = feeds[name][:8] if name in budgets and name in feeds else parity_feeds(net, frames)
        onnx_fp32 = torch_to_onnx(net, base, report, feeds=ref_feeds)
        files[name] = onnx_fp32
        calib["frames"][name] = len(feeds.get(name, ()))
    fp32_files = dict(files)
    if cfg.precision == "int8":
        method, selection = choose_method(sources, cfg, work, feeds, files, report, reference, eval_fn)
        files = int8_files(files, cfg, method, feeds, report)
        calib["method"] = method
        calib |= {"method_selection": selection} if selection else {}
    calib.update(calibset_summary(work))
    return files, calib, fp32_files, nets


def recover_budgets(nets: Mapping[str, TorchNet], cfg: ExportConfig) -> dict[str, RecoverConfig]:
    """The networks to prune, each with its share of the recovery budget: `cfg.recover.max_seconds`
    is the total, split in proportion to the networks' MACs (a distillation step costs about that;
    the 128 px student gets ~12 % beside the 416 px detector), whole seconds."""
    todo = {n: net for n, net in nets.items() if cfg.ratio and net.prune_roots}
    if not todo:
        return {}
    import torch_pruning as tp

    macs = {n: tp.utils.count_ops_and_params(net.module, tuple(net.inputs.values()))[0] for n, net in todo.items()}
    total = sum(macs.values())
    share = {n: float(round(cfg.recover.max_seconds * m / total)) for n, m in macs.items()}
    return {n: replace(cfg.recover, max_seconds=s) for n, s in share.items()}


def pruned(net: TorchNet, cfg: ExportConfig, base: Path, feeds, report: Report, rec: RecoverConfig | None) -> TorchNet:
    if rec is None:
        return net
    p = prune(net, PruneConfig(ratio=cfg.ratio), base.with_name(base.name + ".pruned.pt"), feeds, feeds_id(feeds))
    small = replace(net, module=load_module(p))
    r = recover(small, rec, base.with_name(base.name + ".recovered.pt"), net, feeds, feeds_id(feeds))
    report.add(net.name, p)
    report.add(net.name, r)
    return replace(net, module=load_module(r))


def int8_files(files: Mapping[str, Path], cfg: ExportConfig, method: str, feeds, report: Report) -> dict[str, Path]:
    """Every network quantised with `method`, except those the user keeps FP32 (`--keep-fp32`)."""
    return {n: f if n in cfg.keep_fp32 else int8(f, cfg, method, feeds[n], report, n) for n, f in files.items()}


def int8(fp32: Path, cfg: ExportConfig, method: str, feeds, report: Report, name: str) -> Path:
    stem = fp32.parent / fp32.name.replace(".sim.onnx", f".int8-{method}")  # detector.int8-minmax
    qcfg = QuantConfig(method=method, detection=cfg.detection)
    q = quantize(fp32, qcfg, f"{stem}.onnx", feeds, feeds_id(feeds))
    chk = qdq_check(q, QdqCheckConfig(), f"{stem}.qdq.json")
    par = parity(q, INT8, f"{stem}.parity.json", onnx_runner(fp32), "fp32-onnx", feeds)
    agr = [detection_agreement(q, fp32, feeds, f"{stem}.agreement.json")] if name == "detector" else []
    for p in (q, chk, par, *agr):
        report.add(name, p)
    worst = min(r["cosine"] for r in json.loads(Path(par).read_text())["outputs"].values())
    if worst < cfg.int8_min_cosine:
        log.warning("%s: INT8 output cosine %.3f < %.2f even with its sensitive layers in float; the network "
                    "stays FP32 in the bundle (the gate judges the rest)", name, worst, cfg.int8_min_cosine)
        return fp32
    f1 = json.loads(Path(agr[0]).read_text()).get("f1") if agr else None
    if f1 is not None and f1 < qcfg.detection.min_f1:
        log.warning("%s: INT8 keeps F1 %.3f of the FP32 detections on the calibration feeds (< %.2f) even with "
                    "its first layers float; it stays FP32 in the bundle (--keep-fp32 %s does this up front)",
                    name, f1, qcfg.detection.min_f1, name)
        return fp32
    if f1 is not None and not qcfg.detection.min_f1 and f1 < NEAR_CAMERA_F1:
        log.warning("%s: INT8 keeps F1 %.3f of the FP32 detections on the calibration feeds (fewer on near "
                    "people); for a near-camera scene, compare this bundle on your own video with one exported "
                    "with --keep-fp32 %s or --min-detection-f1 %.2f (docs/export_measurements.md 'Detection rounds')",
                    name, f1, name, NEAR_CAMERA_F1)
    return q


def choose_method(sources, cfg, work, feeds, files, report, reference, eval_fn) -> tuple[str, dict]:
    """`auto`: quantise with each method, score each on the train-side `cfg.select` sequences (the
    gate's held-out ones stay unseen until the final gate), keep the smallest worst HOTA drop."""
    if cfg.method != "auto":
        return cfg.method, {}
    sel, drops = replace(cfg.gate, sequences=cfg.select, force=False), {}
    for method in METHODS:
        qfiles = int8_files(files, cfg, method, feeds, report)
        stage = stage_bundle(sources, qfiles, "int8", work / f"auto-{method}", {"method": method}, {})
        verdict = json.loads(gate_accuracy(stage, sel, work / f"auto-{method}.select.json", reference,
                                           eval_fn).read_text())
        drops[method] = verdict["gated_hota_drop"]
    best = min(METHODS, key=lambda m: (drops[m], METHODS.index(m)))
    log.info("--method auto: worst HOTA drops on %s %s -> %s", list(cfg.select), drops, best)
    return best, {"sequences": list(cfg.select), "conditions": list(sel.conditions), "gated_hota_drops": drops}


def windows_overlap(a: str, b: str) -> bool:
    """Do two 'NAME[:A-B]' sequence specs share a frame? (no window = the whole sequence)"""
    from .accuracy_gate import split_sequence

    (na, wa), (nb, wb) = split_sequence(a), split_sequence(b)
    if Path(na).name != Path(nb).name:
        return False
    return wa is None or wb is None or (wa[0] <= wb[1] and wb[0] <= wa[1])


def stage_bundle(sources: Sources, nets: Mapping[str, Path], precision: str, where: Path,
                 export_meta: Mapping[str, Any], calib: Mapping[str, Any]) -> Path:
    files = {f"{n}.onnx": BundleFile(p, n, "int8" if ".int8-" in p.name else "fp32") for n, p in nets.items()}
    files |= {name: BundleFile(p, "params" if name.endswith(".json") else "notice") for name, p in sources.files.items()}
    meta = dict(export_meta) | {"fp32_networks": sorted(n for n, p in nets.items() if ".int8-" not in p.name)}
    contents = BundleContents(files, dict(sources.provenance), dict(calib), parity_of(nets), meta)
    tracker = default_tracker(sources) if "tracker" in nets else "bytetrack"
    return write_bundle(contents, BundleConfig(precision=precision, tracker=tracker), where)


def default_tracker(sources: Sources) -> str:
    """The tracker tracker.pt recommends (its meta's default_tracker, measured in training), else the
    hybrid: the kit's measured best on held-out scenes with any tracker network (docs/networks.md).
    A user's own tracker.pt (vsdmot-train tracker --ship) names none, and exported as e2e."""
    meta = sources.provenance.get("checkpoints", {}).get("tracker", {}).get("meta", {})
    if not meta.get("default_tracker"):
        log.info("tracker.pt names no default tracker: the bundle recommends the hybrid (vsdmot-edge run "
                 "--tracker e2e runs the end-to-end one)")
    return str(meta.get("default_tracker") or "hybrid")


def parity_of(nets: Mapping[str, Path]) -> dict[str, Any]:
    out = {}
    for name, path in nets.items():
        stem = path.name.replace(".sim.onnx", "").replace(".onnx", "")
        pj, aj = path.with_name(stem + ".parity.json"), path.with_name(stem + ".agreement.json")
        if pj.is_file():
            out[name] = json.loads(pj.read_text())
        if aj.is_file() and name in out:  # an INT8 detector: its detections against the FP32 ones
            out[name]["detections"] = json.loads(aj.read_text())
    return out


def staging_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.staging-{os.getpid()}")


def sweep_killed(out: Path) -> None:
    """What an export killed outright (SIGKILL, the OOM killer) left beside `out`: its staging
    directory (a sealed, loadable bundle nobody removed) goes; its `.OUT.old-PID` (the previous
    bundle, moved aside just before the kill) goes back to `out` when `out` is missing, else goes."""
    for left in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-[0-9]*")):
        kind, _, pid = left.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("staging", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(left, out)
            log.warning("put back %s: an export was killed between moving it aside and publishing", out)
        else:
            shutil.rmtree(left, ignore_errors=True)
            log.info("removed %s, left by an export that was killed", left)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def export_info(cfg: ExportConfig) -> dict[str, Any]:
    return {"precision": cfg.precision, "prune": cfg.ratio, "method": cfg.method, "target": cfg.target,
            "recover": {"steps": cfg.recover.steps, "max_seconds": cfg.recover.max_seconds},
            "detector_input": size_text(cfg.input_size) if cfg.input_size else "as trained"}


def summarize(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's "accuracy" section: per case the bundle's and FP32's metrics and the drop."""
    keep = ("rule", "threshold_hota_drop", "gated_hota_drop", "pooled_hota_drops", "worst_case_hota_drop",
            "max_case_drop", "control")
    return {"vs": "fp32 reference (unpruned)", **{k: verdict[k] for k in keep if k in verdict},
            "cases": verdict.get("cases", [])}


def calibset_summary(work: Path) -> dict[str, Any]:
    path = work / "calibset.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def finish(stage: Path, out: Path, accuracy: Mapping, verdict: Mapping, report: Report, cfg: ExportConfig,
           work: Path, copy: bool = False) -> Path:
    """Record the verdict and the report in the staged bundle, then publish it (a copy when `copy`)."""
    gate = {k: verdict.get(k) for k in ("passed", "forced", "reason", "rule", "gated_hota_drop", "threshold_hota_drop")}
    gate["forced"] = bool(verdict.get("forced") or (cfg.gate.force and not verdict.get("passed")))
    refused = [f"{describe_precisions(r['networks'])}: {r['reason']}" for r in report.refused]
    report.summary = {"precision": json.loads((stage / MANIFEST).read_text())["precision"],  # what the files are
                      "prune": cfg.ratio, "method": cfg.method,
                      "networks": bundle_precisions(stage), "gate": gate["reason"],
                      **({"refused_by_the_gate": refused} if refused else {}),
                      "forced": gate["forced"], "accuracy_vs_fp32": {
                          f"{c['sequence']} {c['condition']}": f"HOTA {100 * c['bundle']['HOTA']:.1f} "
                          f"(fp32 {100 * c['reference']['HOTA']:.1f})" for c in accuracy.get("cases", [])},
                      "work_dir": str(work)}
    if copy:  # the fp32 reference stays in the work dir for later gates
        shutil.rmtree(staging_dir(out), ignore_errors=True)
        stage = Path(shutil.copytree(stage, staging_dir(out)))
    reports = ("export_report.json", "export_report.md")
    if accuracy.get("cases"):  # the FP32 reference has no gate to draw
        reports += (plot_gate(accuracy, stage / "export_report.png", gate).name,)
    write_report(report, stage, images=[n for n in reports if n.endswith(".png")])
    record_gate(stage, accuracy, gate, reports)
    return publish(stage, out, gate)


def bundle_precisions(stage: Path) -> dict[str, str]:
    """Network -> precision of its file in a staged bundle (the manifest's per-file entry)."""
    files = json.loads((stage / MANIFEST).read_text()).get("files", {})
    return {n.removesuffix(".onnx"): e["precision"] for n, e in sorted(files.items()) if e.get("precision")}


def describe_precisions(precisions: Mapping[str, str]) -> str:
    """{"detector": "int8", ...} -> "detector int8, student int8, tracker int8"."""
    return ", ".join(f"{n} {p}" for n, p in precisions.items())


__all__ = ["ExportConfig", "Sources", "export", "load_sources", "default_work_dir"]
