"""`vsdmot-export`: prune, quantise and package the networks into a verified model bundle.

    vsdmot-export [--int8 | --fp16 | --fp32] [--prune RATIO] [--calib PATH ...] --out DIR [CHECKPOINT]

--int8 (default): the recommended device bundle: pruned at the measured default ratio (0 today:
no pruned bundle has passed the gate), INT8 Q/DQ calibrated on degraded clips, refused when its
HOTA drops more than --max-hota-drop against FP32.
--fp32: the unpruned reference. --fp16: FP32 ONNX whose TensorRT engine is built in FP16.
With no CHECKPOINT it exports the shipped weights (models/weights/).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vsdmot import __version__
from vsdmot._cli import Parser, add_log_arguments, run_main, sigterm_exits

from .bundle import NETWORKS
from .det_rounds import NEAR_CAMERA_F1

log = logging.getLogger(__name__)


def ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 0.95), got {text!r}") from None
    if not 0.0 <= v < 0.95:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 0.95), got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vsdmot-export", description=__doc__.splitlines()[0],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_arguments(p)
    _bundle_arguments(p.add_argument_group("the bundle"))
    _int8_arguments(p.add_argument_group("INT8 and pruning"))
    _gate_arguments(p.add_argument_group("the accuracy gate (against the FP32 reference, on held-out frames)"))
    p.add_argument("--work-dir", default="", metavar="DIR",
                   help="intermediates, reused by a re-run (default $VSDMOT_EXPORT_CACHE or ~/.cache/vsdmot/export, "
                   "then <out name>-<hash of the out path>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _bundle_arguments(g) -> None:
    """What is exported, where to, and for which runtime."""
    from .defaults import DEFAULT_PRUNE, RECOVER_SECONDS, TARGETS

    prec = g.add_mutually_exclusive_group()
    for flag in ("int8", "fp16", "fp32"):
        prec.add_argument(f"--{flag}", dest="precision", action="store_const", const=flag, help=f"{flag} bundle")
    g.set_defaults(precision="int8")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="bundle directory to write")
    g.add_argument("checkpoint", nargs="?", type=Path, metavar="CHECKPOINT",
                   help="weights folder (like models/weights/) or one network's .pt; default: shipped weights")
    g.add_argument("--prune", type=ratio, metavar="RATIO", help=f"channel pruning ratio (default {DEFAULT_PRUNE:g} "
                   f"for --int8/--fp16, the measured choice; 0 for --fp32)")
    g.add_argument("--recover-seconds", type=float, default=None, metavar="S",
                   help=f"recovery budget after pruning: total CPU seconds, shared by the pruned networks by MACs "
                   f"(default {RECOVER_SECONDS:g})")
    g.add_argument("--target", choices=TARGETS, default="onnx", help="onnx (Q/DQ for ORT and TensorRT), tensorrt "
                   "(on the device: also prebuilds its TensorRT engines after publishing; on TensorRT < 10.1 the "
                   "INT8 ones with the legacy entropy calibrator over the same calibration feeds), torch-tensorrt "
                   "(on a device with it: also compiles each torch network with Torch-TensorRT for PyTorch "
                   "applications, cached beside the engines; FP16, or FP32 for --fp32)")
    g.add_argument("--engine-cache", default="", metavar="DIR", help="with --target tensorrt or torch-tensorrt: "
                   "cache what is built here, for the runs that read it (a service: /var/cache/vsdmot/engines; "
                   "default: $VSDMOT_ENGINE_CACHE, else $XDG_CACHE_HOME/vsdmot/engines, else ~/.cache/vsdmot/engines, as "
                   "vsdmot-edge run)")
    g.add_argument("--input-size", type=input_size, default=None, metavar="WxH",
                   help="detector input, multiples of 32 (default: as trained, 416x416). Match the camera's "
                   "aspect to skip padding rows: 416x320 for 4:3, 416x256 for 16:9 (docs/export.md 'Input size')")


def _int8_arguments(g) -> None:
    """Calibration and which networks stay float."""
    from .defaults import DEFAULT_METHOD

    g.add_argument("--calib", nargs="+", metavar="PATH", default=[], help="calibration sources: videos, image "
                   "folders, MOTChallenge sequences (PATH:A-B keeps frames A..B); default: the kit's degraded set")
    g.add_argument("--method", choices=["minmax", "entropy", "percentile", "auto"], default=DEFAULT_METHOD,
                   help=f"INT8 calibration method; auto picks by the gate's HOTA (default {DEFAULT_METHOD})")
    g.add_argument("--calib-quality", choices=["auto", "gate", "proxy"], default="auto",
                   help="stratify calibration frames by the bundle's quality gate (gate) or by degradation severity "
                   "(proxy); default auto: the gate, whose quality.json every checkpoint has")
    g.add_argument("--keep-fp32", nargs="+", default=[], metavar="NET", choices=NETWORKS,
                   help="networks that stay FP32 in an --int8 bundle (e.g. detector: near-camera scenes lost "
                   "detections in INT8 here, see docs/export_measurements.md 'Unseen degradations')")
    g.add_argument("--min-detection-f1", type=unit_float, default=0.0, metavar="F1",
                   help="INT8 detector: keep its first layers float until its detections agree with FP32's at "
                   f"this F1 on the calibration feeds, else keep it FP32 ({NEAR_CAMERA_F1} for near-camera "
                   "scenes; default 0: off, see docs/export_measurements.md 'Detection rounds')")


def _gate_arguments(g) -> None:
    """When a bundle is refused."""
    from .accuracy_gate import RULES, GateConfig

    g.add_argument("--force", action="store_true", help="publish even if the accuracy gate fails (recorded), as exported: "
                   "no network put back to FP32")
    g.add_argument("--max-hota-drop", type=float, default=GateConfig.max_hota_drop, metavar="POINTS",
                   help="accuracy gate threshold, HOTA points against FP32 (default %(default)s)")
    g.add_argument("--gate-rule", choices=RULES, default=GateConfig.rule,
                   help="what must stay within --max-hota-drop: balanced = (mean clean drop + mean degraded "
                   "drop) / 2; pooled = each of the two means; mean = the mean over all cases; per-case = every "
                   f"single sequence-condition (noisier than a 1.0 threshold) (default {GateConfig.rule})")
    g.add_argument("--max-case-drop", type=float, default=GateConfig.max_case_drop, metavar="POINTS",
                   help="whatever the rule, refuse when one sequence-condition loses more than this "
                   f"(default {GateConfig.max_case_drop}: above every train-side null case; inf turns it off)")
    g.add_argument("--gate-control", action="store_true", help="also gate a null bundle (the FP32 reference "
                   "rounded to FP16) and report its drops beside the verdict: the gate's noise floor")


def input_size(text: str) -> tuple[int, int]:
    """argparse type: 'WxH' (or 'S' for a square) -> (H, W), each a multiple of 32, at least 64."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        w = h = None
    if w is None or h is None or min(w, h) < 64 or w % 32 or h % 32:
        raise argparse.ArgumentTypeError(f"expected WxH with W and H multiples of 32, at least 64 (e.g. 416x320), "
                                         f"got {text!r}")
    return h, w


def unit_float(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def config_from_args(args: argparse.Namespace):
    from dataclasses import replace

    from .accuracy_gate import GateConfig
    from .chain import ExportConfig
    from .det_rounds import DetectionRoundsConfig
    from .recover import RecoverConfig

    rec = RecoverConfig() if args.recover_seconds is None else replace(RecoverConfig(), max_seconds=args.recover_seconds)
    return ExportConfig(precision=args.precision, prune=args.prune, method=args.method, target=args.target,
                        calib=tuple(args.calib), work_dir=args.work_dir, recover=rec, keep_fp32=tuple(args.keep_fp32),
                        detection=DetectionRoundsConfig(min_f1=args.min_detection_f1),
                        gate=GateConfig(max_hota_drop=args.max_hota_drop, force=args.force, rule=args.gate_rule,
                                        max_case_drop=args.max_case_drop,
                                        control=args.gate_control),
                        progress=not args.no_progress, calib_quality=args.calib_quality,
                        input_size=args.input_size, engine_cache=args.engine_cache)


def run(args: argparse.Namespace) -> int:
    from .chain import bundle_precisions, describe_precisions, export

    cfg = config_from_args(args)
    check_out(args.out, default_recipe=is_default_recipe(cfg, args.checkpoint))
    check_work_dir(Path(cfg.work_dir) if cfg.work_dir else None, args.out)
    check_calib_paths(cfg.calib)
    check_gate_data(cfg)
    if cfg.engine_cache:  # written at the end (legacy engines before publishing): not after minutes of work
        from vsdmot.runtime.sinks import check_writable

        check_writable(Path(cfg.engine_cache) / "engine.plan", "--engine-cache")
    if cfg.target == "torch-tensorrt":
        check_torch_tensorrt()
    if cfg.target == "tensorrt":
        check_tensorrt()
    with terminate_as_exit():
        out = export(cfg, args.out, args.checkpoint)
    if cfg.target == "tensorrt":
        prebuild_engines(out, cfg.engine_cache or None)
    nets = describe_precisions(bundle_precisions(out))
    label = json.loads((out / "manifest.json").read_text())["precision"]  # int8 only while a network is
    log.warning("bundle written: %s (%s: %s; prune %.2f)", out, label, nets, cfg.ratio)
    print(out)
    return 0


def is_default_recipe(cfg, checkpoint) -> bool:
    """The export that makes the shipped default bundle: `vsdmot-export --fp32` from the shipped weights."""
    from .chain import ExportConfig

    return (cfg.precision, cfg.ratio, cfg.input_size, cfg.target, checkpoint) == (
        "fp32", 0.0, ExportConfig().input_size, "onnx", None)


def check_out(out: Path, default_recipe: bool = False) -> None:
    """--out is a new path, an empty folder or a bundle, somewhere writable: checked before the
    export spends its minutes (found only at publish time, it cost the whole run and a bare errno).
    The shipped default bundle is replaced only by its own recipe (`default_recipe`): an `--int8`
    export once replaced what every `vsdmot-edge run` without --bundle loads."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE, MANIFEST

    from .bundle import check_replaceable

    real = out.resolve()
    if (real == DEFAULT_BUNDLE and not default_recipe) or DEFAULT_BUNDLE in real.parents:
        raise ValueError(f"--out {out}: is the kit's shipped default bundle, which `vsdmot-edge run` uses without "
                         "--bundle; only its own recipe (`vsdmot-export --fp32`, shipped weights) may replace it. "
                         "Export to another directory and pass it as --bundle")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a bundle directory; choose a new or bundle directory")
    outer = next((p for p in real.parents if is_bundle_manifest(p / MANIFEST)), None)
    if outer is not None:  # the outer bundle could no longer be replaced: it would hold files not its own
        raise ValueError(f"--out {out}: is inside the bundle {outer}; export next to it, not into it")
    check_replaceable(out)
    base = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    try:  # a real write probe: os.access says yes to root on read-only or virtual file systems (/proc)
        tempfile.TemporaryDirectory(dir=base, prefix=f".{out.name}.probe-").cleanup()
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {base} ({e.strerror}); choose a writable location") from None


def check_work_dir(work: Path | None, out: Path) -> None:
    """--work-dir not --out nor inside it: the bundle replaces --out whole, and the intermediates in
    it made it a folder that is not a bundle, refused only at publish time, after minutes of work.
    (--out inside --work-dir is fine: nothing removes the work directory.)"""
    if work is None:
        return
    w, o = work.resolve(), out.resolve()
    if w == o or o in w.parents:
        raise ValueError(f"--work-dir {work} is --out {out} or inside it: expected a folder apart from the bundle "
                         "(the bundle replaces --out whole; the intermediates stay in --work-dir for a re-run)")


def terminate_as_exit():
    """SIGTERM ends the export through SystemExit(143), so export()'s cleanup removes the staging
    directory as on Ctrl-C; the default handler killed it and left the staging behind."""
    return sigterm_exits("vsdmot-export: terminated; finished steps stay in the work directory, re-run to resume")


def check_calib_paths(specs) -> None:
    """Every --calib PATH[:A-B] exists and opens, checked before the reference export spends its minutes."""
    from vsdmot.calibration.calibset import parse_source
    from vsdmot.runtime.errors import SourceError
    from vsdmot.runtime.sources import open_file_source

    for spec in specs:
        path, span = parse_source(spec)
        if not path.exists():
            raise ValueError(f"--calib {spec}: no such file or folder (expected a video, an image folder or a "
                             "MOTChallenge sequence, optionally PATH:A-B)")
        try:  # opening decodes at most one frame; no video, or a folder with no images, is refused here
            src = open_file_source(path)
        except SourceError as e:
            raise ValueError(f"--calib {spec}: {e}") from None
        src.close()
        check_not_held_out(spec, path, span, sequence_name(path, src.name))


def is_bundle_manifest(path: Path) -> bool:
    """A vsdmot bundle's manifest, not any file of that common name (a web app's, an extension's)."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "schema_version" in m and isinstance(m.get("files"), dict)


def check_gate_data(cfg) -> None:
    """The accuracy gate (and --method auto) track the kit's held-out sequences: refuse before any work
    when they are not there (a device install has no ../shared/data), not after the reference export."""
    from .accuracy_gate import data_root, split_sequence

    if cfg.precision == "fp32" and cfg.ratio == 0:  # the reference: nothing to gate (a pruned FP32 one is gated)
        return
    root = data_root(cfg.gate)
    wanted = [*cfg.gate.sequences, *(cfg.select if cfg.method == "auto" else ())]
    missing = sorted({split_sequence(s)[0] for s in wanted if not (root / split_sequence(s)[0]).is_dir()})
    if missing:
        raise ValueError(f"the accuracy gate tracks {', '.join(missing)} and finds no such folder in {root}: set "
                         "VSDMOT_DATA to the folder that holds them (../shared/data beside a checkout), or export "
                         "on a machine that has them and copy the bundle folder")


def sequence_name(path: Path, name: str) -> str:
    """The sequence a calibration source belongs to: an image folder inside a MOTChallenge sequence
    (`PETS09-S2L1/img1`) is that sequence's frames, whatever the folder is called."""
    from vsdmot.runtime.mot import read_seqinfo

    path = path.resolve()  # a symlink to a sequence's img1 is that sequence's frames too
    if path.is_dir() and (path.parent / "seqinfo.ini").is_file():
        return read_seqinfo(path.parent).name
    return name


def check_not_held_out(spec: str, path: Path, span: tuple[int, int] | None, name: str) -> None:
    """ValueError when `span` of sequence `name` includes the accuracy gate's held-out frames: the gate
    would score frames the INT8 ranges were fit on. The message names the range that is free."""
    from vsdmot.splits import HELD_OUT_FRAMES, frames_base, held_out_by_name, held_out_text, touches_held_out

    if not touches_held_out(name, span):
        return
    base = frames_base(name)
    instead = (f"use {path}:1-{HELD_OUT_FRAMES[base][0] - 1}" if base and not held_out_by_name(name)
               else "calibrate on other sequences")
    raise ValueError(f"--calib {spec}: {name} frames {'%d-%d' % span if span else '(all)'} include the accuracy "
                     f"gate's held-out frames ({held_out_text()}); {instead}")


def check_torch_tensorrt() -> None:
    """--target torch-tensorrt needs torch_tensorrt (with libnvinfer) on this machine."""
    from vsdmot.runtime.errors import DeviceError

    try:
        import torch
        import torch_tensorrt  # noqa: F401
    except (ImportError, OSError) as e:
        raise DeviceError(f"--target torch-tensorrt needs torch-tensorrt with TensorRT on this device ({e}); "
                          f"use --target onnx (the Q/DQ ONNX builds on TensorRT directly)") from None
    if not torch.cuda.is_available():  # checked before the export spends its minutes, not at compile time
        raise DeviceError("--target torch-tensorrt compiles on this device's GPU, and torch sees no CUDA device; "
                          "export with --target onnx and compile on the device")


def check_tensorrt() -> None:
    """--target tensorrt builds the engines here, so TensorRT must import and make a Builder (it does on a
    Jetson). The wheel imports without a usable GPU; Builder() then fails ("factory function returned nullptr")."""
    from vsdmot.runtime.errors import DeviceError

    try:
        import tensorrt as trt

        trt.Builder(trt.Logger(trt.Logger.ERROR))  # the lean wheel has no Builder (AttributeError)
    except (ImportError, OSError, AttributeError, TypeError, RuntimeError) as e:
        raise DeviceError(f"--target tensorrt builds engines on this device and needs TensorRT ({e}); export with "
                          f"--target onnx and let `vsdmot-edge run --backend tensorrt` build them on the device") from None


def prebuild_engines(out: Path, cache_dir: str | None = None) -> None:
    """Build and cache each network's engine now (runtime.backends keys the cache by ONNX sha256,
    TensorRT version, GPU and precision), so the first `vsdmot-edge run --precision P` starts at full
    speed. Each network is built at what a run with --precision auto asks for it: INT8 for a Q/DQ
    file, FP16 for any other (an --int8 bundle whose gate kept the detector FP32 has both)."""
    from vsdmot.runtime.backends import TensorRTBackend, default_engine_cache, engine_precision
    from vsdmot.runtime.bundle import load_bundle

    bundle, cache = load_bundle(out), cache_dir or default_engine_cache()
    for name in bundle.names:
        if name.endswith(".onnx"):
            precision = engine_precision(bundle.entry(name).get("precision") or bundle.precision)  # as runs key it
            backend = TensorRTBackend(bundle.file(name), precision=precision, cache_dir=cache)
            backend.close()  # built: key.precision is what TensorRT could give (runtime.backends.typed_precision)
            log.info("TensorRT %s engine for %s built and cached in %s (vsdmot-edge run --backend tensorrt, "
                     "--precision auto or %s, with that engine cache)", backend.key.precision, name, cache, precision)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(build_parser(), argv)
