"""What `vsdmot-export` exports: the shipped networks (models/weights/) or CHECKPOINT as torch
modules with example inputs (`Sources`), and their calibration feeds (degraded real frames for
the detector and student; recorded tracker inputs from the FP32 reference bundle)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsdmot.paths import data_root

from .bundle import NETWORKS
from .report import fingerprint
from .to_onnx import TorchNet

if TYPE_CHECKING:  # chain.py imports this module
    from .chain import ExportConfig

log = logging.getLogger(__name__)


@dataclass
class Sources:
    """What to export: torch networks, JSON params and notices, provenance."""

    nets: dict[str, TorchNet]  # detector / student / tracker
    files: dict[str, Path] = field(default_factory=dict)  # bundle name -> path (quality.json, NOTICE)
    provenance: dict[str, Any] = field(default_factory=dict)
    feeds: dict[str, Sequence[Mapping]] = field(default_factory=dict)  # overrides (tests; tracker feeds)




def load_sources(checkpoint: str | Path | None = None) -> Sources:
    """Networks from CHECKPOINT (a weights folder like models/weights/, or one <network>.pt whose
    siblings fill in the rest), else the shipped weights. quality.json and NOTICE come along."""
    from vsdmot.models.detector import WEIGHTS_DIR

    ckpt = Path(checkpoint) if checkpoint else WEIGHTS_DIR
    if not ckpt.exists():
        raise ValueError(f"CHECKPOINT {ckpt}: no such file or folder")
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    paths = {n: folder / f"{n}.pt" for n in NETWORKS if (folder / f"{n}.pt").is_file()}
    if ckpt.is_file():
        paths[ckpt.stem if ckpt.stem in NETWORKS else "detector"] = ckpt
    if "detector" not in paths:
        raise ValueError(f"CHECKPOINT {ckpt}: expected detector.pt (and student.pt, tracker.pt) there")
    if not (folder / "quality.json").is_file():  # every pipeline reads it: a bundle without it would never run
        raise ValueError(f"CHECKPOINT {ckpt}: no quality.json beside it (the quality gate's and DSWR's parameters, "
                         f"which every run reads); copy {WEIGHTS_DIR / 'quality.json'} there or make one with "
                         "vsdmot-train quality")
    nets, prov = {}, {"checkpoints": {}}
    for n in NETWORKS:
        if n not in paths:
            log.warning("no %s.pt beside %s: the bundle will have no %s", n, folder, n)
    for name, path in paths.items():
        nets[name], meta = load_network(name, path)
        prov["checkpoints"][name] = {"path": _shown(path), "sha256": file_sha(path), "meta": _jsonable(meta)}
    check_together(nets, ckpt)
    files = {n: folder / n for n in ("quality.json", "NOTICE") if (folder / n).is_file()}
    note_dswr(files["quality.json"], prov["checkpoints"].get("tracker", {}).get("meta", {}))
    if "NOTICE" not in files:  # every detector here descends from YOLOX-nano: its Apache-2.0 notice must go along
        log.info("no NOTICE beside %s: the bundle carries the shipped one (YOLOX-nano, Apache-2.0)", folder)
        files["NOTICE"] = WEIGHTS_DIR / "NOTICE"
    prov["notice"] = "NOTICE (carried in the bundle): YOLOX-nano, Apache-2.0, Megvii"
    return Sources(nets, files, prov)


def check_together(nets: Mapping[str, TorchNet], ckpt: Path) -> None:
    """ValueError when the student's vector is not the width the tracker fuses (a student trained
    with another --dim): the runtime refuses such a bundle at every start, after it was published."""
    tracker = nets.get("tracker")
    if "student" not in nets or tracker is None or "semantic" not in tracker.inputs:
        return
    got = int(nets["student"].run()[nets["student"].outputs[0]].shape[-1])
    want = int(tracker.inputs["semantic"].shape[-1])
    if got != want:
        raise ValueError(f"CHECKPOINT {ckpt}: student.pt makes a {got}-wide semantic vector, but tracker.pt fuses "
                         f"{want}: the networks do not belong together (train the student with --dim {want})")


def note_dswr(quality_json: Path, tracker_meta: Mapping[str, Any]) -> None:
    """Warn when quality.json's DSWR, which the runtime applies, is not the g(q) the tracker learned
    with (quality.json made before the tracker, or from another one): w = g(q) then weights the
    semantics differently from training."""
    ours, learned = json.loads(quality_json.read_text()).get("dswr"), tracker_meta.get("dswr")
    if not (isinstance(ours, Mapping) and isinstance(learned, Mapping)):
        return
    keys = ("w_max", "k", "q0")
    if any(abs(float(ours.get(k, 0)) - float(learned.get(k, 0))) > 1e-4 for k in keys):
        log.warning("quality.json's DSWR (%s) is not the one tracker.pt learned (%s): runs apply quality.json's; "
                    "make it with `vsdmot-train quality --tracker TRACKER.pt`", _dswr_text(ours), _dswr_text(learned))


def _dswr_text(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {float(d.get(k, 0)):.3g}" for k in ("w_max", "k", "q0"))


def with_detector_input(sources: Sources, hw: tuple[int, int] | None) -> Sources:
    """`sources` with the detector exported at (H, W) instead of its trained square (None: as
    trained). The detector is fully convolutional: only the example input, hence the ONNX's static
    shape and anchor count, change. A camera-shaped input (416x320 for 4:3) skips padding rows."""
    net = sources.nets.get("detector")
    if hw is None or net is None or tuple(net.inputs["images"].shape[-2:]) == tuple(hw):
        return sources
    import torch

    resized = replace(net, inputs={"images": torch.zeros(1, 3, *hw)})
    return replace(sources, nets={**sources.nets, "detector": resized})


def load_network(name: str, path: Path) -> tuple[TorchNet, dict]:
    """LOADERS[name](path), with a file that is not that network's checkpoint (another network's
    weights, a truncated or foreign file) refused in one line instead of a torch traceback."""
    try:
        return LOADERS[name](path)
    except Exception as e:  # noqa: BLE001  (pickle, torch and config errors all mean "not this network")
        raise ValueError(f"CHECKPOINT {path}: not a {name} checkpoint ({type(e).__name__}: {str(e)[:120]}); "
                         f"expected {name}.pt as in models/weights/") from None


def _detector(path: Path) -> tuple[TorchNet, dict]:
    import torch

    from vsdmot.models.detector import load_detector

    m, meta = load_detector(path)
    s = m.cfg.input_size
    return TorchNet("detector", m, {"images": torch.zeros(1, 3, s, s)}, ("output", "embed"),
                    prune_roots=("yolox.backbone",), keep_layers=("yolox.head", "embed_proj")), meta


def _student(path: Path) -> tuple[TorchNet, dict]:
    import torch

    from vsdmot.models.student import load_student

    m, meta = load_student(path)
    r = m.cfg.input_size
    return TorchNet("student", m, {"image": torch.zeros(1, 3, r, r)}, ("semantic",),
                    prune_roots=("features",), keep_layers=("head",)), meta


def _tracker(path: Path) -> tuple[TorchNet, dict]:
    """The tracker head is not pruned: its cost (~13 of ~66 ms a frame here) is the pair-feature MLP,
    not attention heads; fewer heads were not faster (docs/export_measurements.md "The tracker head")."""
    from vsdmot.models.tracker_head import INPUTS, OUTPUTS, example_inputs
    from vsdmot.models.train_tracker import load_tracker

    m, meta = load_tracker(path)
    return TorchNet("tracker", m, dict(zip(INPUTS, example_inputs(m.cfg))), tuple(OUTPUTS)), meta


LOADERS = {"detector": _detector, "student": _student, "tracker": _tracker}

PARITY_CLIP = Path(__file__).resolve().parents[1] / "runtime" / "assets" / "demo.mp4"  # shipped, real PETS frames


def parity_frames(n: int = 8, clip: Path = PARITY_CLIP) -> list[np.ndarray]:
    """`n` real frames spread over the shipped demo clip, (h, w, 3) uint8 BGR: what the FP32
    reference's torch -> ONNX parity runs on (it compared one all-zero input, which agrees trivially)."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted, frames = set(np.linspace(0, max(count - 1, 0), n).round().astype(int).tolist()), []
    for i in range(max(wanted, default=-1) + 1):  # decode in order, keep only the picked ones
        ok, img = cap.read()
        if not ok:
            break
        if i in wanted:
            frames.append(img)
    cap.release()
    if not frames:
        raise ValueError(f"parity frames: cannot read {clip}")
    return frames


def parity_feeds(net: TorchNet, frames: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]] | None:
    """The network's inputs for real frames, prepared as the runtime does: the detector's letterbox
    (runtime.yolox), the student's INTER_AREA resize (runtime.semantics). None for the tracker, whose
    inputs are a pipeline's state (its example inputs; its INT8 parity runs on recorded feeds)."""
    from vsdmot.runtime.semantics import student_input
    from vsdmot.runtime.yolox import letterbox

    if net.name not in ("detector", "student"):
        return None
    (name, x), = net.inputs.items()  # one input, (1, 3, H, W)
    h, w = (int(d) for d in x.shape[-2:])
    if net.name == "detector":
        return [{name: letterbox(f, (h, w))[0]} for f in frames]
    return [{name: student_input(f, (w, h))} for f in frames]


def _shown(path: Path) -> str:
    """A checkpoint path as recorded: relative to the repository when inside it (no local prefixes)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)


def file_sha(path: Path) -> str:
    from vsdmot.runtime.bundle import file_sha256

    return file_sha256(path)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def default_calib_sources() -> tuple[str, ...]:
    """PETS09-S2L1 frames 1-600 and MOT17-mini (never the gate's held-out frames); else the demo clip."""
    root = data_root()
    if (root / "PETS09-S2L1").is_dir():
        mot17 = sorted((root / "MOT17-mini" / "train").glob("MOT17-*"))
        return (f"{root / 'PETS09-S2L1'}:1-600", *map(str, mot17))
    return (str(Path(__file__).resolve().parents[1] / "runtime" / "assets" / "demo.mp4"),)


def calibration_feeds(sources: Sources, names: Sequence[str], cfg: ExportConfig, work: Path,
                      reference: Path) -> dict[str, Sequence[Mapping]]:
    """Detector and student feeds from the calibration set; tracker feeds recorded from the FP32
    reference pipeline run over the calibration frames (real proposals and carried track state)."""
    from vsdmot.calibration.calibset import CalibSetConfig
    from vsdmot.calibration.feeds import DetectorFeeds, StudentFeeds

    ccfg = stored_size(cfg.calibset or CalibSetConfig(), sources)
    srcs = cfg.calib or default_calib_sources()
    use_gate = cfg.calib_quality != "proxy"  # auto is the gate: every checkpoint carries quality.json
    params = json.loads(sources.files["quality.json"].read_text()) if use_gate else None
    cs = shared_calibset(srcs, ccfg, work.parent / f"calib-{fingerprint(srcs, ccfg, params)[:12]}", params,
                         cfg.progress)
    (work / "calibset.json").write_text(json.dumps({k: cs.manifest[k] for k in (
        "sources", "frame_count", "quality", "quality_histogram", "presets", "sha256")} | {"path": str(cs.path)}))
    out: dict[str, Sequence[Mapping]] = {}
    for name in names:
        size = sources.nets[name].inputs
        if name == "detector":
            hw = tuple(size["images"].shape[-2:])  # (H, W)
            out[name] = _keyed(DetectorFeeds(cs, hw), cs)
            if (cfg.ratio or cfg.near_calibration) and not cfg.calib:  # pruning: distil on near pedestrians too (NearFeeds)
                out[name] = NearFeeds(out[name], near_pedestrian_frames(hw))
        elif name == "student":
            out[name] = _keyed(StudentFeeds(cs, size["image"].shape[-1]), cs)
    if "tracker" in names:
        out["tracker"] = record_tracker_feeds(reference, cs)
    return out


def stored_size(ccfg, sources: Sources):
    """The calibration set stores frames letterboxed into S x S (416); a detector input wider or
    taller than S (`--input-size 640x384`) needs S at least its longer side, or its feeds would be
    416-px content scaled up, blurrier than the frames it sees at run time."""
    det = sources.nets.get("detector")
    side = max(det.inputs["images"].shape[-2:]) if det is not None else 0
    return replace(ccfg, size=int(side)) if side > ccfg.size else ccfg


def shared_calibset(srcs, ccfg, where: Path, params, progress: bool):
    """`build_calibset` into `where`, a folder shared by every work directory under the same parent
    (its name carries everything the set depends on: sources, config, quality params), built under
    an exclusive lock: a second export waits and reuses the set. Without the lock two concurrent
    exports both wrote frames.npy, one under the other's read-only memory map (zeros or SIGBUS), and
    a --calib-quality proxy export rebuilt a gate-stratified set in place under a running one."""
    from vsdmot.calibration.calibset import build_calibset
    from vsdmot.runtime.locks import waiting_lock

    with waiting_lock(where.with_name(where.name + ".lock"), f"building the calibration set {where.name}"):
        return build_calibset(srcs, ccfg, where, params, progress=progress)


class NearFeeds(Sequence):
    """Calibration feeds followed by near-pedestrian crops (`near_pedestrian_frames`), for the
    detector when it is pruned (statistics and distillation; also its INT8 calibration then).
    Why: PETS09 1-600 shows people ~45 px tall at 416; a pruned detector distilled on it kept PETS
    and lost TUD-Campus's near people (docs/export_measurements.md "Pruning + recovery"). The crops
    count as one more calibration source in the pruning statistics' per-source share."""

    def __init__(self, base, near):
        self.base, self.near = base, near  # near: (N, 1, 3, H, W) uint8 (letterboxed pixels)
        records = list(getattr(getattr(base, "frames", None), "manifest", {}).get("frames") or [{}] * len(base))
        self.frames = type("Frames", (), {"manifest": {"frames": records + [{"source": "near-pedestrian crops"}] * len(near)}})
        h = hashlib.sha256(str(near.shape).encode())
        h.update(np.ascontiguousarray(near))  # the buffer itself: fingerprint(bytes) peaked at 8x (1.2 GB)
        self.key = f"{feeds_id(base)}+near:{h.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.base) + len(self.near)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = i + len(self) if i < 0 else i
        return self.base[i] if i < len(self.base) else {"images": self.near[i - len(self.base)].astype(np.float32)}


def feeds_id(feeds) -> str:
    """What names feeds in the prune/recover/quantize keys: their own key (a stored calibration set),
    else a hash of their contents (recorded tracker feeds change with the runtime's tracker; a count
    alone let a tracker quantised on stale feeds be reused)."""
    key = str(getattr(feeds, "key", ""))
    if key:
        return key
    h = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            a = np.ascontiguousarray(feed[name])
            h.update(f"{name}{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return f"n={len(feeds)}:{h.hexdigest()[:16]}"


def near_pedestrian_frames(size: int | tuple[int, int], per_frame: int = 3, seed: int = 1) -> np.ndarray:
    """(N, 1, 3, H, W) uint8 letterboxed crops of train-side frames around ground-truth people: each
    MOT17-mini frame, `per_frame` visible pedestrians, a square of 1/2 and of 1/3 of the frame
    height (at least 1.3x the person) around each; PETS09-S2L1 frames 10, 20, ..., 600, one
    person each, a square of 2.5x their height. Empty without ../shared/data. Never the gate's
    frames (PETS09 601-795, TUD-Campus)."""
    root, rng, out = data_root(), np.random.default_rng(seed), []
    for seq in sorted((root / "MOT17-mini" / "train").glob("MOT17-*")):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
        for img_path in sorted((seq / "img1").glob("*.jpg")):
            img = _imread(img_path)
            rows = gt[(gt[:, 0] == int(img_path.stem)) & (gt[:, 7] == 1) & (gt[:, 8] > 0.5)]
            for r in rows[rng.choice(len(rows), size=min(per_frame, len(rows)), replace=False)]:
                out += [_crop_letterbox(img, r[2:6], max(img.shape[0] / k, 1.3 * r[5]), size) for k in (2, 3)]
    pets = root / "PETS09-S2L1"
    if (pets / "PETS09-S2L1.avi").is_file():
        import cv2

        gt, cap = np.loadtxt(pets / "gt" / "gt.txt", delimiter=",", ndmin=2), cv2.VideoCapture(str(pets / "PETS09-S2L1.avi"))
        for f in range(10, 601, 10):
            cap.set(cv2.CAP_PROP_POS_FRAMES, f - 1)
            ok, img = cap.read()
            rows = gt[(gt[:, 0] == f) & (gt[:, 6] > 0)]
            if ok and len(rows):
                r = rows[rng.integers(len(rows))]
                out.append(_crop_letterbox(img, r[2:6], 2.5 * r[5], size))
        cap.release()
    from vsdmot.runtime.yolox import input_hw

    return np.stack(out).astype(np.uint8) if out else np.zeros((0, 1, 3, *input_hw(size)), np.uint8)


def _imread(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path))


def _crop_letterbox(img: np.ndarray, box: np.ndarray, side: float, size: int | tuple[int, int]) -> np.ndarray:
    """A square of `side` px (clipped to the image) centred on box (x, y, w, h), letterboxed: (1, 3, H, W)."""
    from vsdmot.runtime.yolox import letterbox

    h, w = img.shape[:2]
    side = int(min(side, h, w))
    x0 = int(np.clip(box[0] + box[2] / 2 - side / 2, 0, w - side))
    y0 = int(np.clip(box[1] + box[3] / 2 - side / 2, 0, h - side))
    return letterbox(img[y0:y0 + side, x0:x0 + side], size)[0]


def _keyed(feeds, cs):
    feeds.key = f"{cs.manifest['sha256']}:{type(feeds).__name__}:{feeds.size}"
    return feeds


def record_tracker_feeds(reference: Path, cs, limit: int = 512) -> list[dict]:
    """tracker.onnx's inputs as the FP32 reference pipeline feeds them over the calibration frames."""
    from vsdmot.calibration.feeds import record_feeds
    from vsdmot.runtime.bundle import load_bundle
    from vsdmot.runtime.config import RunConfig
    from vsdmot.runtime.pipeline import build_pipeline, step
    from vsdmot.runtime.types import Frame

    run = RunConfig()  # onnxruntime, as the gate tracks: `auto` built TensorRT engines for this throwaway reference
    p = build_pipeline(load_bundle(reference), replace(run, pipeline=replace(run.pipeline, backend="onnxruntime")), 7.0)
    try:
        trk = next(b for b in p.backends if Path(getattr(b, "path", "")).stem == "tracker")
        frames = (Frame(i + 1, cs.image(i), i / 7.0) for i in range(min(len(cs), limit)))
        return record_feeds(lambda f: step(f, p), frames, {"tracker": trk})["tracker"]
    finally:
        p.close()
