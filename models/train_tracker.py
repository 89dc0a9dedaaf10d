"""`vsdmot-train tracker`: synthetic pretraining, then fine-tuning on real TRAIN clips, MOTR-style.

Each step unrolls B clips frame by frame with the runtime's own slot bookkeeping (constant-velocity
prediction, appearance EMA, miss tolerance 20), teacher-forced by ground truth:
- track slots keep their gt identity: pointer target = the proposal carrying that identity, else
  the "no match" column; keep target = 1 if matched;
- detect queries are matched to newborn objects (an identity with no live slot): birth target 1 on
  the proposal carrying it (synthetic boxes carry their identity; real boxes get it by Hungarian
  matching to gt at IoU >= 0.5, `noise_model.match_to_gt`), 0 on false positives and duplicates;
- track drop-out (a live slot is deleted, so the object must be re-born) and false-positive
  injection (a slot born from a false positive, whose target is always "no match").
Track queries flow through time with gradients, truncated every `tbptt` frames.
Real data: PETS09-S2L1 frames 1-600 and MOT17-mini only (clean and degraded detections).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsdmot.models import WEIGHTS
from vsdmot.paths import data_root
from vsdmot.runtime.e2e import predict_boxes, update_motion
from vsdmot.splits import PETS_TRAIN_LAST

from .realclips import RealClips
from .synth import SynthConfig, SynthFrame, load_noise, make_clip
from .tracker_head import TrackerHead, TrackerHeadConfig
from .trainloop import check_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # torch and numpy seed
    synth_steps: int = 300  # steps of synthetic-only pretraining
    real_steps: int = 150  # steps of fine-tuning (real clips mixed with synthetic)
    real_share: float = 0.5  # share of real clips in a fine-tuning batch
    batch: int = 8  # clips per step
    clip_frames: int = 40  # frames per clip (long: exercises the miss tolerance)
    slots: int = 24  # S during training (the graph has no size-dependent weights)
    proposals: int = 32  # P during training
    tbptt: int = 10  # frames between gradient truncations of the track queries
    lr: float = 1e-3  # AdamW learning rate (cosine decay)
    dswr_lr: float = 0.0  # DSWR's own param group (3 scalars, no weight decay); 0 = same as lr
    sem_lr: float = 0.0  # the fusion layers' own group (TrackerHead.SEM_PARAMS); 0 = same as lr
    sem_fusion: str = ""  # overrides head.sem_fusion: "norm" = gain * LayerNorm(Linear(sem)); "" = the head's
    weight_decay: float = 1e-4  # AdamW
    clip_grad: float = 1.0  # gradient norm clip
    drop_track: float = 0.03  # chance per frame and live slot of deleting it (must be re-born)
    inject_fp: float = 0.15  # chance per frame of a slot born from a false positive
    birth_pos_weight: float = 2.0  # BCE weight on positive birth targets (they are rare)
    miss_tolerance: int = 20  # frames a slot survives unmatched (MOTRv2)
    momentum: float = 0.7  # velocity EMA (same as the runtime's)
    embed_momentum: float = 0.8  # appearance EMA (same as the runtime's)
    box_smooth: float = 0.0  # weight of the predicted box in a matched slot's box state (E2EConfig.box_smooth)
    # 0 = the detection's box, the state the shipped head was trained on
    box_smooth_share: float = 1.0  # share of clips that use box_smooth (the rest keep the detection's box)
    random_semantic: float = 0.3  # share of clips whose semantic vector is a random direction (robust to any student)
    real_semantics: bool = False  # real clips: cached real q and student vectors (else stand-ins, q ~ U)
    synth_semantics: str = "standin"  # synthetic clips: "standin" vectors, or "real" (q, vector) runs borrowed from real clips
    val_first: int = 601  # PETS frames from here on are left out of the real clips (541: train-side validation)
    init: str = ""  # start from this checkpoint's weights (e.g. the synthetic pretraining), not from scratch
    data: str = str(data_root())  # the real clips' root
    weights: str = ""  # folder whose detector.pt, student.pt, quality.json read the real clips ("" = the shipped)
    max_minutes: float = 25.0  # CPU-time budget of this process in minutes (all threads; 0 = none), like the other stages; stops early and saves
    stop_at: int = 0  # stop after this step with the schedule of all steps (0 = at the end): repeats a budget-stopped run
    out: str = "runs/train/tracker"  # checkpoint folder
    threads: int = 1  # torch threads (shared machine)
    log_every: int = 10  # steps between log lines
    save_every: int = 50  # steps between checkpoints
    head: TrackerHeadConfig = field(default_factory=TrackerHeadConfig)  # network shape
    synth: SynthConfig = field(default_factory=SynthConfig)  # synthetic generator

    def __post_init__(self) -> None:
        check_config(self, {"synth_steps": 0, "real_steps": 0, "batch": 1, "clip_frames": 1, "slots": 1, "proposals": 1,
                            "tbptt": 1, "miss_tolerance": 0, "threads": 1, "log_every": 1, "save_every": 1, "stop_at": 0},
                     ("real_share", "drop_track", "inject_fp", "box_smooth", "box_smooth_share", "random_semantic",
                      "momentum", "embed_momentum"), at_most={"val_first": PETS_TRAIN_LAST + 1})
        if self.synth_semantics not in ("standin", "real") or self.sem_fusion not in ("", "linear", "norm"):
            raise ValueError(f"expected --synth-semantics standin|real and --sem-fusion ''|linear|norm, got "
                             f"{self.synth_semantics!r} and {self.sem_fusion!r}")


@dataclass
class Slots:
    """Teacher-forced slot state for B clips; queries are torch (with grad), the rest numpy."""

    valid: np.ndarray  # (B,S) bool
    gid: np.ndarray  # (B,S) int64 identity, -1 = slot born from a false positive
    box: np.ndarray  # (B,S,4) last matched box
    vel: np.ndarray  # (B,S,4) per-frame box velocity
    miss: np.ndarray  # (B,S) frames since the last match
    embed: np.ndarray  # (B,S,E) appearance EMA
    query: torch.Tensor  # (B,S,d)
    smooth: np.ndarray  # (B,1,1) weight of the predicted box in a matched box state, per clip

    @classmethod
    def empty(cls, b: int, s: int, e: int, d: int, smooth: np.ndarray | None = None) -> Slots:
        z = lambda *sh: np.zeros(sh, np.float32)  # noqa: E731
        sm = z(b, 1, 1) if smooth is None else np.asarray(smooth, np.float32).reshape(b, 1, 1)
        return cls(np.zeros((b, s), bool), np.full((b, s), -1), z(b, s, 4), z(b, s, 4), z(b, s), z(b, s, e),
                   torch.zeros(b, s, d), sm)


def pack_frame(fr: SynthFrame, P: int) -> tuple[np.ndarray, ...]:
    """Top-P proposals by score: box (P,4), score (P,), embed (P,E), mask (P,), gid (P,)."""
    order = np.argsort(-fr.score, kind="stable")[:P]
    n, E = len(order), fr.embed.shape[1]
    box, score, emb = np.zeros((P, 4), np.float32), np.zeros(P, np.float32), np.zeros((P, E), np.float32)
    mask, gid = np.zeros(P, np.float32), np.full(P, -2)
    box[:n], score[:n], emb[:n], mask[:n], gid[:n] = fr.xyxy[order], fr.score[order], fr.embed[order], 1, fr.gid[order]
    box[n:] = [0, 0, 1, 1]
    return box, score, emb, mask, gid


def frame_inputs(frames: list[SynthFrame], st: Slots, P: int, dswr=None):
    """Torch inputs (INPUTS order) for one frame of B clips, and the proposals' gids (B,P).
    With a DSWR head, w = g(q) (0 where semantics are off), so the tracking loss trains g."""
    packed = [pack_frame(f, P) for f in frames]
    pb, ps, pe, pm, pg = (np.stack(x) for x in zip(*packed))
    tbox = predict_boxes(st.box, st.vel, st.miss + 1)
    t = torch.from_numpy
    sem = np.stack([f.semantic for f in frames])
    w = t(np.array([[f.w] for f in frames], np.float32))
    if dswr is not None:
        q = t(np.array([[f.q] for f in frames], np.float32))
        w = torch.where(q < 0, torch.zeros_like(q), dswr(q))
    feed = (t(pb), t(ps), t(pe), t(pm), st.query, t(tbox.astype(np.float32)), t(st.embed), t(st.miss),
            t(st.valid.astype(np.float32)), t(sem), w)
    return feed, pg, (pb, pe)


def targets(st: Slots, pg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointer target per slot (B,S) in [0, P] (P = no match) and birth target per proposal (B,P)."""
    B, S = st.valid.shape
    P = pg.shape[1]
    ptr = np.full((B, S), P)
    birth = np.zeros((B, P), np.float32)
    for b in range(B):
        live = set(st.gid[b, st.valid[b] & (st.gid[b] >= 0)].tolist())
        where = {g: p for p, g in enumerate(pg[b].tolist()) if g >= 0}
        for s in np.flatnonzero(st.valid[b] & (st.gid[b] >= 0)):
            ptr[b, s] = where.get(int(st.gid[b, s]), P)
        for g, p in where.items():
            birth[b, p] = float(g not in live)
    return ptr, birth


def frame_loss(out, st: Slots, ptr, birth, pmask, active, cfg: TrainConfig) -> torch.Tensor:
    """Pointer CE + keep BCE over live slots, birth BCE over valid proposals, of active clips (B,)."""
    logits, keep, born, _, _ = out
    valid = torch.from_numpy(st.valid & active[:, None])
    tgt = torch.from_numpy(ptr)
    ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)
    seen = (tgt < logits.shape[-1] - 1).float()
    bk = F.binary_cross_entropy(keep.clamp(1e-6, 1 - 1e-6), seen, reduction="none")
    nv = valid.float().sum().clamp(min=1)
    l_track = ((ce + bk) * valid).sum() / nv
    bt, pm = torch.from_numpy(birth), torch.from_numpy(pmask * active[:, None])
    wt = (1 + (cfg.birth_pos_weight - 1) * bt) * pm
    l_birth = (F.binary_cross_entropy(born.clamp(1e-6, 1 - 1e-6), bt, reduction="none") * wt).sum() / pm.sum().clamp(min=1)
    return l_track + l_birth


def advance(st: Slots, out, ptr, birth, pg, pb, pe, cfg: TrainConfig, rng: np.random.Generator) -> None:
    """Teacher-forced bookkeeping, the same rules as runtime/e2e.py (motion, EMA, misses, births)."""
    _, _, _, t_out, b_out = out
    P = pg.shape[1]
    matched = st.valid & (ptr < P)
    idx = np.where(matched, ptr, 0)
    new_box = np.take_along_axis(pb, idx[..., None], 1)  # (B,S,4)
    new_emb = np.take_along_axis(pe, idx[..., None], 1)  # (B,S,E)
    if st.smooth.any():  # the runtime's partial state update: the state lags the detection as at run time
        new_box = st.smooth * predict_boxes(st.box, st.vel, st.miss + 1) + (1 - st.smooth) * new_box
    st.box, st.vel = update_motion(st.box, st.vel, new_box, st.miss + 1, matched, cfg.momentum)
    mix = cfg.embed_momentum * st.embed + (1 - cfg.embed_momentum) * new_emb
    st.embed = np.where(matched[..., None], mix / np.maximum(np.linalg.norm(mix, axis=-1, keepdims=True), 1e-6), st.embed)
    st.miss = np.where(matched, 0, st.miss + 1).astype(np.float32)
    st.valid &= (st.miss <= cfg.miss_tolerance) & (rng.random(st.valid.shape) >= cfg.drop_track)
    query = t_out.clone()
    for b, p in zip(*np.nonzero(birth)):
        _born(st, query, b, p, int(pg[b, p]), pb, pe, b_out)
    for b in np.flatnonzero(rng.random(len(pg)) < cfg.inject_fp):
        fp = np.flatnonzero(pg[b] == -1)
        if len(fp):
            _born(st, query, b, int(rng.choice(fp)), -1, pb, pe, b_out)
    st.query = query


def _born(st: Slots, query: torch.Tensor, b: int, p: int, gid: int, pb, pe, b_out) -> None:
    free = np.flatnonzero(~st.valid[b])
    if not len(free):
        return
    s = free[0]
    st.valid[b, s], st.gid[b, s], st.box[b, s], st.vel[b, s] = True, gid, pb[b, p], 0
    st.miss[b, s], st.embed[b, s] = 0, pe[b, p]
    query[b, s] = b_out[b, p]


def _blank(f: SynthFrame) -> SynthFrame:
    """An empty frame that pads a short clip (its loss is masked)."""
    z = np.zeros((0, 4), np.float32)
    return SynthFrame(z, np.zeros(0, np.float32), np.zeros((0, f.embed.shape[1]), np.float32), np.zeros(0, np.int64),
                      f.semantic, f.w, z, np.zeros(0, np.int64))


class TrainModel(torch.nn.Module):
    """The tracker head and the DSWR head, trained together (checkpoint keys head.*, dswr.*)."""

    def __init__(self, head: TrackerHeadConfig):
        super().__init__()
        from .dswr import DswrHead

        self.head = TrackerHead(head)
        self.dswr = DswrHead()


def rollout(model: TrainModel, clips: list[list[SynthFrame]], cfg: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Unroll B clips (equal length) and return the mean loss over frames."""
    smooth = clip_smooth(cfg, len(clips), rng)
    st = Slots.empty(len(clips), cfg.slots, model.head.cfg.embed_dim, model.head.cfg.d, smooth)
    total = torch.zeros(())
    T = max(len(c) for c in clips)
    for t in range(T):
        if t % cfg.tbptt == 0:
            st.query = st.query.detach()
        active = np.array([t < len(c) for c in clips])
        frames = [c[t] if t < len(c) else _blank(c[-1]) for c in clips]
        feed, pg, (pb, pe) = frame_inputs(frames, st, cfg.proposals, model.dswr)
        out = model.head(*feed)
        ptr, birth = targets(st, pg)
        total = total + frame_loss(out, st, ptr, birth, feed[3].numpy(), active, cfg) * active.mean()
        advance(st, out, ptr, birth, pg, pb, pe, cfg, rng)
    return total / T


def clip_smooth(cfg: TrainConfig, b: int, rng: np.random.Generator) -> np.ndarray:
    """(B,) box_smooth per clip: box_smooth on a `box_smooth_share` of clips, else 0. Draws from
    rng only for a share strictly between 0 and 1, so the other settings see the old data stream."""
    if cfg.box_smooth == 0 or cfg.box_smooth_share <= 0:
        return np.zeros(b, np.float32)
    if cfg.box_smooth_share >= 1:
        return np.full(b, cfg.box_smooth, np.float32)
    return np.where(rng.random(b) < cfg.box_smooth_share, cfg.box_smooth, 0.0).astype(np.float32)


def make_batch(cfg: TrainConfig, noise: dict, real: RealClips | None, rng: np.random.Generator) -> list[list[SynthFrame]]:
    """B clips (a short real clip is padded in `rollout`): synthetic, or real with probability `real_share` once real is given."""
    clips = []
    for _ in range(cfg.batch):
        if real is not None and rng.random() < cfg.real_share:
            clips.append(real.sample(cfg.clip_frames, rng))
        else:
            clips.append(make_clip(cfg.synth, noise, rng))
            if real is not None and cfg.synth_semantics == "real":
                real.bank.lend(clips[-1], rng)
        if rng.random() < cfg.random_semantic:
            _random_semantic(clips[-1], rng)
    return clips


def _random_semantic(clip: list[SynthFrame], rng: np.random.Generator) -> None:
    """Replace the stand-in vectors by one random direction (plus noise): w * proj(sem) must not
    break tracking when the real student's vectors look nothing like the stand-in."""
    u = rng.normal(size=clip[0].semantic.shape)
    for f in clip:
        if f.q >= 0:
            v = u + 0.3 * rng.normal(size=u.shape)
            f.semantic = (v / np.linalg.norm(v)).astype(np.float32)


# ---------------------------------------------------------------- loop

def reading_models(weights: str) -> tuple:
    """(detector, semantics) the real clips are read with: a folder's detector.pt, quality.json and
    student.pt (a user's own, so the tracker learns from the networks it will be deployed beside),
    or (None, None): the shipped ones."""
    if not weights:
        return None, None
    from .noise_model import ShippedSemantics, project_detector

    folder = Path(weights)
    missing = [n for n in ("detector.pt", "student.pt", "quality.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"--weights {folder}: expected detector.pt, student.pt and quality.json there, "
                         f"missing {', '.join(missing)}")
    return project_detector(weights=folder / "detector.pt"), ShippedSemantics(folder / "quality.json",
                                                                               folder / "student.pt")


def train(cfg: TrainConfig, resume: bool = True, real: RealClips | None = None) -> Path:
    """Run (or resume) the stage; returns the final checkpoint path (out/last.pt)."""
    from tqdm import tqdm

    from .checkpoint import resume as resume_ckpt, save_checkpoint

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    head_cfg = head_config(cfg)
    model = TrainModel(head_cfg)
    opt = make_optimizer(model, cfg)
    out = Path(cfg.out)
    last = out / "last.pt"
    step = resume_ckpt(last, model, opt, cfg) if resume and last.is_file() else 0
    if step == 0 and cfg.init:
        from .checkpoint import load_checkpoint

        init_from(model, load_checkpoint(cfg.init)["model"])
        log.info("initialised from %s", cfg.init)
    noise, total = load_noise(), cfg.synth_steps + cfg.real_steps
    if cfg.real_steps and real is None:
        real = RealClips(cfg.data, cfg.head.embed_dim, cfg.head.semantic_dim, cfg.real_semantics, cfg.val_first,
                         *reading_models(cfg.weights))
    t0 = time.process_time()  # the budget is training's: building the clips (detection over sequences) is not
    end = min(total, cfg.stop_at) if cfg.stop_at else total
    bar = tqdm(range(step, end), initial=step, total=end, desc="tracker", mininterval=5)
    avg = None
    for step in bar:
        loss = _train_step(model, opt, cfg, noise, real if step >= cfg.synth_steps else None, step, total)
        avg = loss if avg is None else 0.95 * avg + 0.05 * loss
        bar.set_postfix(loss=f"{avg:.3f}")
        if (step + 1) % cfg.log_every == 0:
            log.info("step %d loss %.4f", step + 1, avg)
        over = 0 < cfg.max_minutes < (time.process_time() - t0) / 60  # CPU time: a busy machine does not cut the run short
        if (step + 1) % cfg.save_every == 0 or step + 1 == end or over:
            save_checkpoint(last, model, head_cfg, cfg, opt, step + 1, meta=_meta(cfg, avg, model))
        if over:
            log.warning("CPU budget of %g min reached at step %d of %d; to repeat this run exactly: --stop-at %d "
                        "--max-minutes 0", cfg.max_minutes, step + 1, total, step + 1)
            break
    return last


def head_config(cfg: TrainConfig) -> TrackerHeadConfig:
    """The head's config with the `sem_fusion` override applied."""
    return dataclasses.replace(cfg.head, sem_fusion=cfg.sem_fusion) if cfg.sem_fusion else cfg.head


def init_from(model: TrainModel, state: dict) -> None:
    """Load another run's weights; only the "norm" fusion's own parameters may be missing (a
    "linear" checkpoint): they keep their init (LayerNorm identity affine, gain `sem_gain`)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(("head.sem_norm.", "head.sem_gain"))] + list(unexpected)
    if bad:
        raise ValueError(f"--init: checkpoint does not fit the head; missing / unexpected keys {bad}")
    if missing:
        log.info("--init: new fusion parameters %s start from their init", missing)


def make_optimizer(model: TrainModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with three groups: the head (lr, weight decay), its fusion layers (sem_lr) and DSWR's
    3 scalars (dswr_lr, no decay: decay would pull q0 toward 0). Each group's cosine schedule
    starts at its `base_lr`."""
    dlr, slr = cfg.dswr_lr or cfg.lr, cfg.sem_lr or cfg.lr
    named = list(model.head.named_parameters())
    sem = [p for n, p in named if n.startswith(TrackerHead.SEM_PARAMS)]
    rest = [p for n, p in named if not n.startswith(TrackerHead.SEM_PARAMS)]
    return torch.optim.AdamW([
        {"params": rest, "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": sem, "lr": slr, "base_lr": slr, "weight_decay": cfg.weight_decay},
        {"params": list(model.dswr.parameters()), "lr": dlr, "base_lr": dlr, "weight_decay": 0.0}])


def _train_step(model: TrainModel, opt, cfg: TrainConfig, noise: dict, real, step: int, total: int) -> float:
    rng = np.random.default_rng([cfg.seed, step])  # per step: a resumed run draws the same data
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    model.train()
    loss = rollout(model, make_batch(cfg, noise, real, rng), cfg, rng)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    opt.step()
    return loss.item()


def _meta(cfg: TrainConfig, loss: float | None, model: TrainModel) -> dict:
    h = model.head
    fusion = {"form": h.cfg.sem_fusion, **({"gain": round(h.sem_gain.item(), 4)} if h.cfg.sem_fusion == "norm" else {})}
    return {"stage": "tracker", "loss": loss, "seed": cfg.seed, "dswr": model.dswr.to_params(), "fusion": fusion,
            "semantics": ("real clips: the shipped gate's q and student's vectors; synthetic: " + cfg.synth_semantics)
            if cfg.real_semantics else "stand-in vectors (a fixed base + a degradation direction), not the student's",
            "data": "synthetic (noise model from PETS09-S2L1 1-600 + MOT17-mini)"
                    + (f" + PETS09-S2L1 1-{min(cfg.val_first - 1, 600)} + MOT17-mini" if cfg.real_steps else ""),
            "detector": "models/weights/detector.pt (YOLOX-nano converted, Apache-2.0)"}


SHIPPED = WEIGHTS / "tracker.pt"


def ship(ckpt: str | Path, dest: str | Path = SHIPPED) -> Path:
    """Write the shipped weights: the tracker head alone (checkpoint layout, no optimizer),
    with the jointly trained DSWR parameters and the training provenance in its meta."""
    from .checkpoint import load_checkpoint, save_checkpoint

    c = load_checkpoint(ckpt)
    head = TrackerHead(TrackerHeadConfig.from_dict(c["model_config"]))
    head.load_state_dict({k[5:]: v for k, v in c["model"].items() if k.startswith("head.")})
    meta = dict(c["meta"], step=c["step"], train_config=c["train_config"])
    # the checkpoint layout's own step and train_config too: they read 0 and {} beside the meta's
    return save_checkpoint(dest, head, head.cfg, c["train_config"], step=c["step"], meta=meta)


def load_tracker(path: str | Path = SHIPPED) -> tuple[TrackerHead, dict]:
    """The shipped (or any `ship`ped) tracker head, eval mode, and its meta."""
    from .checkpoint import load_model_file

    return load_model_file(path, lambda c: TrackerHead(TrackerHeadConfig.from_dict(c)))


def add_arguments(parser) -> None:
    from .trainloop import add_config_args

    add_config_args(parser, TrainConfig, skip=("head", "synth"))
    parser.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    parser.add_argument("--ship", default=None, help="also write the head alone to this path (e.g. models/weights/tracker.pt)")


def run(args) -> int:
    from .trainloop import config_from_args

    cfg = config_from_args(TrainConfig, args)
    last = train(cfg, resume=not args.no_resume)
    log.info("tracker checkpoint: %s", last)
    if args.ship:
        log.info("shipped: %s", ship(last, args.ship))
    return 0
