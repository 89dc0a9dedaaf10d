"""`vsdmot-train quality`: fit the quality head on degraded training frames (task-aware target).

Target: how much a degradation changes what the detector sees. For a training frame and a
degraded copy (random per-frame preset, severity 1..5, plus the clean frame itself), the detector
runs on both; q* = F1 agreement of the degraded frame's person boxes with the clean frame's
(score > score_thr, IoU >= 0.5). So q = 1 means "the detector sees what it would see on a clean
frame", whatever the scene; frames where the clean detector sees nobody carry no signal and are
skipped. The head (runtime/quality.py: standardise, small MLP, sigmoid) is fitted by BCE on q*.

Samples are collected once into <out>/samples.npz (resumable: collection continues where it
stopped), then the head is fitted in seconds. Training frames only (PETS 1-600, MOT17-mini).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vsdmot.models import WEIGHTS
from vsdmot.models.trainframes import DEFAULT_DATA, TrainFrame, data_note, degrade_fn, load_mot17, load_pets
from vsdmot.models.trainloop import check_config, out_dir, resuming, setup
from vsdmot.splits import PETS_TRAIN_LAST
from vsdmot.paths import yolox_nano_onnx
from vsdmot.runtime.mot import atomic_write_text
from vsdmot.runtime.quality import FEATURES, QualityGate, compute_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityTrainConfig:
    seed: int = 0  # python, numpy and torch seed
    pets_every: int = 6  # use every n-th PETS frame of 1-600
    views: int = 2  # random views per frame (crop 50-100 %, downscaled to a random short side): scene variety
    draws: int = 5  # degraded copies per view (random preset and severity each)
    min_side: int = 360  # smallest short side of a view, px
    severity_max: int = 5  # severities drawn from 1..severity_max
    score_thr: float = 0.3  # detections counted for the agreement target
    hidden: int = 32  # MLP hidden units (0 = logistic regression)
    epochs: int = 400  # full-batch Adam epochs of the head fit
    lr: float = 1e-2  # Adam learning rate
    weight_decay: float = 1e-3  # Adam weight decay (L2)
    pets_last: int = 600  # last PETS frame used (601-795 never)
    mot17: bool = True  # also use the MOT17-mini train frames
    detector: str = str(yolox_nano_onnx())  # ONNX giving the target
    data: str = str(DEFAULT_DATA)  # root of the real data (PETS09-S2L1, MOT17-mini)
    out: str = "runs/train/quality"  # run folder: samples.npz (resumable) and quality.json
    threads: int = 1  # torch and onnxruntime threads
    resume: bool = False  # continue collecting into <out>/samples.npz
    tracker: str = str(WEIGHTS / "tracker.pt")  # its learned DSWR g(q) goes into quality.json ("" = none)

    def __post_init__(self) -> None:
        check_config(self, {"pets_every": 1, "views": 1, "draws": 0, "min_side": 16, "hidden": 0, "epochs": 0,
                            "threads": 1}, ("score_thr",), "severity_max", {"pets_last": PETS_TRAIN_LAST})


def _detect_fn(path: str, threads: int, thr: float):
    """image -> (K, 4) person boxes, source px, by onnxruntime (the runtime's own decode and NMS)."""
    import onnxruntime as ort

    from vsdmot.runtime.yolox import decode, letterbox, nms

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name, size = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[2]

    def detect(img: np.ndarray) -> np.ndarray:
        x, r = letterbox(img, size)
        xyxy, score, _ = decode(sess.run(None, {name: x})[0], size, score_thr=thr)
        return xyxy[nms(xyxy, score, 0.45)] / r

    return detect


def agreement(a: np.ndarray, b: np.ndarray, iou_thr: float = 0.5) -> float:
    """F1 of boxes b against boxes a (greedy one-to-one matching by IoU). a non-empty."""
    if len(b) == 0:
        return 0.0
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)  # noqa: E731
    iou = inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)
    matches = 0
    while iou.size and iou.max() >= iou_thr:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        iou[i, :], iou[:, j], matches = -1, -1, matches + 1
    return 2.0 * matches / (len(a) + len(b))


def random_view(img: np.ndarray, rng, min_side: int) -> np.ndarray:
    """A random crop (50-100 % of each side) downscaled (INTER_AREA) to a random short side."""
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y : y + ch, x : x + cw]
    side = rng.uniform(min(min_side, min(ch, cw)), min(ch, cw))
    r = side / min(ch, cw)
    return cv2.resize(crop, (max(int(cw * r), 16), max(int(ch * r), 16)), interpolation=cv2.INTER_AREA) if r < 1 else crop


def _frame_samples(f: TrainFrame, detect, deg, rng, cfg: QualityTrainConfig) -> list[tuple[np.ndarray, float]]:
    out, (fn, presets) = [], deg
    for v in range(cfg.views):
        view = np.ascontiguousarray(f.image if v == 0 else random_view(f.image, rng, cfg.min_side))
        ref = detect(view)
        if len(ref) == 0:
            continue
        out.append((compute_features(view), 1.0))
        for _ in range(cfg.draws):
            img = fn(view, presets[rng.integers(len(presets))], int(rng.integers(1, cfg.severity_max + 1)), rng)
            out.append((compute_features(img), agreement(ref, detect(img))))
    return out


# Fields that change the collected samples (the rest only change the head fit).
SAMPLE_FIELDS = ("seed", "pets_every", "views", "draws", "min_side", "severity_max", "score_thr", "pets_last",
                 "mot17", "data")


def samples_key(cfg: QualityTrainConfig) -> dict:
    """What samples.npz depends on: the collection fields and the detector file's content."""
    from vsdmot.runtime.bundle import file_sha256

    return {**{k: getattr(cfg, k) for k in SAMPLE_FIELDS}, "detector_sha256": file_sha256(cfg.detector)}


def _resumed_samples(path: Path, key: dict) -> dict[str, np.ndarray]:
    """The samples already at `path`; ValueError if they were collected with another `key`."""
    old = dict(np.load(path))
    if "key" not in old:
        log.warning("%s has no collection key (written by an older vsdmot): resumed unchecked", path)
        return old
    was = json.loads(str(old.pop("key")))
    diff = sorted(k for k in set(key) | set(was) if key.get(k) != was.get(k))
    if diff:
        raise ValueError(f"{path}: samples were collected with other {diff}; drop --resume to collect afresh "
                         "or use a new --out")
    return old


def collect(cfg: QualityTrainConfig, out: Path) -> dict[str, np.ndarray]:
    """X (N, F), y (N,), source (N,) — saved to out/samples.npz every 10 frames (resumable)."""
    path, key = out / "samples.npz", samples_key(cfg)
    old = _resumed_samples(path, key) if resuming(path, cfg.resume) else {
        "X": np.zeros((0, len(FEATURES)), np.float32), "y": np.zeros(0, np.float32), "source": np.zeros(0, "U32"),
        "done": np.zeros(0, "U32")}
    frames = load_pets(Path(cfg.data), last=cfg.pets_last, every=cfg.pets_every) + (load_mot17(Path(cfg.data)) if cfg.mot17 else [])
    detect, deg = _detect_fn(cfg.detector, cfg.threads, cfg.score_thr), degrade_fn()
    X, y, src, done = list(old["X"]), list(old["y"]), list(old["source"]), set(old["done"].tolist())
    for k, f in enumerate(tqdm(frames, desc="quality samples", dynamic_ncols=True, mininterval=2.0)):
        if f.source in done:
            continue
        for feats, target in _frame_samples(f, detect, deg, np.random.default_rng([cfg.seed, k]), cfg):
            X.append(feats), y.append(target), src.append(f.source)
        done.add(f.source)
        if len(done) % 10 == 0 or k == len(frames) - 1:
            _save_samples(path, key, X=np.asarray(X, np.float32), y=np.asarray(y, np.float32),
                          source=np.asarray(src, "U32"), done=np.asarray(sorted(done), "U32"))
    return {"X": np.asarray(X, np.float32), "y": np.asarray(y, np.float32), "source": np.asarray(src)}


def _save_samples(path: Path, key: dict, **arrays: np.ndarray) -> None:
    """np.savez via a temporary file and a rename: a kill mid-write leaves the previous samples."""
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, key=np.asarray(json.dumps(key, sort_keys=True)), **arrays)
    tmp.replace(path)


def is_validation(source: str) -> bool:
    """PETS 541-600 and MOT17-13 are held out of the head fit to report validation numbers."""
    seq, k = source.split(":")
    return (seq == "PETS09-S2L1" and int(k) > 540) or seq == "MOT17-13-FRCNN"


def fit_head(X: np.ndarray, y: np.ndarray, cfg: QualityTrainConfig) -> QualityGate:
    """Standardise, then BCE(sigmoid(mlp(z)), y) full batch with Adam."""
    mean, std = X.mean(0), X.std(0) + 1e-6
    z, t = torch.from_numpy((X - mean) / std), torch.from_numpy(y)
    dims = [X.shape[1]] + ([cfg.hidden] if cfg.hidden else []) + [1]
    layers = [torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
    net = torch.nn.Sequential(*[m for l in layers for m in (l, torch.nn.ReLU())][:-1])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z)[:, 0], t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = [(l.weight.detach().numpy(), l.bias.detach().numpy()) for l in layers]
    return QualityGate(FEATURES, mean.astype(np.float32), std.astype(np.float32), tuple(params))


def metrics(gate: QualityGate, X: np.ndarray, y: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    q = gate.score(X)
    return {"n": int(len(y)), "mae": float(np.abs(q - y).mean()), "spearman": float(spearmanr(q, y).statistic)}


def learned_dswr(tracker: str) -> dict:
    """{"dswr": g(q)} as the tracker stage learned it (its checkpoint's meta), or {} when there is none
    (the torch reference then reads the tracker checkpoint's; a bundle's runtime, DSWR's defaults,
    with a warning unless --tracker "" asked for none). The untrained head's defaults were written here before, and
    copying that quality.json into models/weights replaced the learned g(q) unless the docs' manual
    step was done."""
    from .checkpoint import load_checkpoint

    if not tracker:
        return {}
    if not Path(tracker).is_file():
        log.warning("quality: no tracker checkpoint at %s: quality.json gets no DSWR section", tracker)
        return {}
    dswr = (load_checkpoint(tracker).get("meta") or {}).get("dswr")
    if not dswr:
        log.warning("quality: %s holds no learned DSWR (meta['dswr']): quality.json gets none", tracker)
    return {"dswr": dswr} if dswr else {}


def train(cfg: QualityTrainConfig) -> Path:
    setup(cfg.seed, cfg.threads)
    out = out_dir(cfg.out)
    s = collect(cfg, out)
    val = np.array([is_validation(x) for x in s["source"]])
    val = val if 0 < val.sum() < len(val) else np.zeros(len(val), bool)  # tiny runs: no split
    gate = fit_head(s["X"][~val], s["y"][~val], cfg)
    m = {"train": metrics(gate, s["X"][~val], s["y"][~val]), "validation": metrics(gate, s["X"][val], s["y"][val]) if val.any() else {}}
    log.info("quality head: %s", m)
    doc = {"schema": "vsdmot.quality/1", "gate": gate.params(), **learned_dswr(cfg.tracker),
           "meta": {"stage": "quality", "target": "F1 agreement of degraded vs clean detections", "detector": Path(cfg.detector).name,
                    "data": data_note(cfg.pets_last, cfg.mot17, cfg.pets_every, validation=False), "metrics": m, "train_config": asdict(cfg)}}
    path = out / "quality.json"
    atomic_write_text(path, json.dumps(doc, indent=1))  # a kill mid-write leaves the old file
    return path


def add_arguments(parser) -> None:
    from vsdmot.models.trainloop import add_config_args

    add_config_args(parser, QualityTrainConfig)


def run(args) -> int:
    from vsdmot.models.trainloop import config_from_args

    print(f"quality params: {train(config_from_args(QualityTrainConfig, args))}")
    return 0
