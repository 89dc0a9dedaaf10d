"""Slot bookkeeping (numpy) around the end-to-end tracker network (`tracker.onnx` on any Backend).

The network (models/tracker_head.py, I/O in docs/networks.md "Tracker head") sees P proposal slots
and S track slots with validity masks. This module owns everything around it: track ids, the
track queries carried between frames, constant-velocity box prediction, the appearance EMA, the
miss counter, and packing/unpacking the static-shape feed.

- `E2ETracker`: identity from the network. A live slot is matched to the proposal its pointer
  selects (argmax over P proposals + "no match") when its keep score >= `keep`; a proposal whose
  birth score >= `birth` and that no track took starts a new track. If two tracks point at the
  same proposal (rare), the one with the higher pointer probability wins and the other counts a
  miss this frame. A slot unmatched for more than `miss_tolerance` steps (frames seen; a live
  source's dropped frames are not counted, an outage ends every track: runtime/pipeline.py) dies.
- `HybridTracker`: the same network's pointer probabilities used as the association cost of
  ByteTrack-style two-stage matching (high-score detections first, then low-score ones), so the
  learned appearance/motion cost stays conditioned on frame quality and semantics through w.
Both implement the Tracker protocol (`step(dets, semantic, w) -> Detections` with `track_id`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .backends import Backend
from .logs import log_once
from .tracking import box_iou, linear_assignment, warp_xyxy
from .types import Detections

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class E2EConfig:
    birth: float = 0.5  # birth score a free proposal needs to start a track (MOTRv2; = RunConfig.tracker.birth_score).
    # 0.3 won on train-side PETS 1-600 replays (+2.2) but moved held-out e2e by -1.0 clean / +0.1 degraded
    keep: float = 0.5  # keep score a live track needs to count as seen (MOTRv2)
    miss_tolerance: int = 20  # steps (frames seen) a track survives unseen (MOTRv2)
    output_score: float = 0.6  # a track is reported only at or above this score (MOTRv2)
    min_area: float = 100.0  # px^2: smaller boxes are not reported (MOTRv2)
    min_det_score: float = 0.1  # detections below this are not fed as proposals
    momentum: float = 0.7  # velocity EMA weight on the old velocity
    embed_momentum: float = 0.8  # appearance EMA weight on the old embedding
    max_predict_gap: int = 5  # frames: constant-velocity prediction stops extrapolating after this
    high_score: float = 0.5  # hybrid: detections at or above this are matched in the first stage
    new_score: float = 0.6  # hybrid: an unmatched high detection at or above this starts a track
    match_prob: float = 0.1  # hybrid: least pointer probability for a match
    iou_weight: float = 0.0  # hybrid: cost = 1 - ((1 - a) * p + a * IoU(predicted box, detection))
    min_iou: float = 0.0  # hybrid: pairs whose predicted-box IoU is below this cannot match (0 = no gate)
    low_stage: str = "pointer"  # hybrid second stage cost: "pointer" (the fused cost) or "iou" (ByteTrack's 1 - IoU)
    low_iou: float = 0.5  # hybrid, low_stage "iou": least IoU for a low-score match (ByteTrack's 0.5)
    box_smooth: float = 0.5  # hybrid: weight of the predicted box in a matched slot's box state (0 = the
    # detection's, the shipped behaviour before 0.5 was chosen on PETS 1-600, docs/networks.md "Hybrid state update")
    tentative_hits: int = 0  # a track matched fewer times than this since birth dies at its first miss (ByteTrack: 1)
    e2e_box_smooth: float = 0.0  # e2e: box_smooth for the end-to-end tracker (0 = the detection's box)

    def __post_init__(self) -> None:
        if self.low_stage not in ("pointer", "iou"):
            raise ValueError(f"[tracker.slots] low_stage: expected 'pointer' or 'iou', got {self.low_stage!r}")
        for name in ("birth", "keep", "output_score", "min_det_score", "momentum", "embed_momentum", "high_score",
                     "new_score", "match_prob", "low_iou"):  # scores, probabilities, IoUs and EMA weights
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN fails too
                raise ValueError(f"[tracker.slots] {name}: expected a value in [0, 1], got {getattr(self, name)!r}")
        for name in ("miss_tolerance", "min_area", "max_predict_gap", "tentative_hits"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"[tracker.slots] {name}: expected >= 0, got {getattr(self, name)!r}")
        for name in ("box_smooth", "e2e_box_smooth"):  # 1 would never move the state to a detection
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"[tracker.slots] {name}: expected a weight in [0, 1), got {getattr(self, name)}")
        for name in ("iou_weight", "min_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[tracker.slots] {name}: expected a weight in [0, 1], got {getattr(self, name)}")


def predict_boxes(box: np.ndarray, vel: np.ndarray, gap: np.ndarray, max_gap: int = 5) -> np.ndarray:
    """(..., 4) last matched boxes + (..., 4) per-frame velocity * min(gap, max_gap) frames."""
    return box + vel * np.minimum(gap, max_gap)[..., None]


def update_motion(box, vel, new_box, gap, matched, momentum: float):
    """Matched slots take `new_box` and blend the observed per-frame velocity into `vel`."""
    v = (new_box - box) / np.maximum(gap, 1)[..., None]
    m = matched[..., None]
    return np.where(m, new_box, box), np.where(m, momentum * vel + (1 - momentum) * v, vel)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class _SlotTracker:
    """State and feed packing shared by E2ETracker and HybridTracker."""

    smooth_field = "e2e_box_smooth"  # the E2EConfig weight of the predicted box in a matched slot's box state

    def __init__(self, backend: Backend, cfg: E2EConfig = E2EConfig()):
        self.backend, self.cfg = backend, cfg
        spec = backend.inputs
        self.P = spec["prop_box"].shape[1]  # proposal slots
        self.S, self.d = spec["track_query"].shape[1:]  # track slots, query width
        self.E = spec["prop_embed"].shape[2]  # appearance width
        self.D = spec["semantic"].shape[1]  # semantic width
        self.reset()

    def reset(self, keep_ids: bool = False) -> None:
        S = self.S
        self.valid = np.zeros(S, bool)  # (S,) slot holds a live track
        self.ids = np.zeros(S, np.int64)  # (S,) track id (>= 1) of a live slot
        self.box = np.zeros((S, 4), np.float32)  # (S, 4) last matched box, px
        self.vel = np.zeros((S, 4), np.float32)  # (S, 4) px per frame
        self.miss = np.zeros(S, np.float32)  # (S,) steps since the last match (the network's input, the lifetime)
        self.since = np.zeros(S, np.float32)  # (S,) source frames since the last match (the motion model's clock)
        self.hits = np.zeros(S, np.int64)  # (S,) matches since birth
        self.embed = np.zeros((S, self.E), np.float32)  # (S, E) appearance EMA
        self.query = np.zeros((S, self.d), np.float32)  # (S, d) track queries
        self.next_id = self.next_id if keep_ids else 1  # the id the next new track gets
        self.gap = 1  # source frames since the previous step (step's `gap`)

    def warp(self, a: np.ndarray) -> None:
        """Move the live slots' box state by the camera's (2, 3) affine and turn their velocities
        (px per frame, per corner) by its linear part: predictions stay on the people."""
        a = np.asarray(a, np.float64)
        live = self.valid
        self.box[live] = warp_xyxy(self.box[live], a).astype(np.float32)
        v = self.vel[live].reshape(-1, 2, 2) @ a[:, :2].T  # (L, corner, xy)
        self.vel[live] = v.reshape(-1, 4).astype(np.float32)

    def _proposals(self, dets: Detections) -> Detections:
        """Detections fed as proposals: score >= min_det_score, the top P by score."""
        keep = np.flatnonzero(dets.score >= self.cfg.min_det_score)
        keep = keep[np.argsort(-dets.score[keep], kind="stable")][: self.P]
        feat = dets.feature
        if feat is not None and feat.shape[1] != self.E:
            raise ValueError(f"tracker: expected detection features of width {self.E}, got {feat.shape[1]}")
        return Detections(dets.xyxy[keep], dets.score[keep], feature=feat[keep] if feat is not None and len(keep) else None)

    def _feed(self, props: Detections, semantic: np.ndarray | None, w: float) -> dict[str, np.ndarray]:
        P, n = self.P, len(props)
        box = np.tile(np.array([0, 0, 1, 1], np.float32), (P, 1))
        score, emb, mask = np.zeros(P, np.float32), np.zeros((P, self.E), np.float32), np.zeros(P, np.float32)
        box[:n], score[:n], mask[:n] = props.xyxy, props.score, 1
        if props.feature is not None:
            emb[:n] = props.feature
        sem = np.zeros(self.D, np.float32) if semantic is None else np.asarray(semantic, np.float32).reshape(self.D)
        w = 0.0 if semantic is None else float(w)  # no vector, no fusion
        tbox = predict_boxes(self.box, self.vel, self.since + self.gap, self.cfg.max_predict_gap)
        f = lambda a: np.ascontiguousarray(a, np.float32)[None]  # noqa: E731
        return {"prop_box": f(box), "prop_score": f(score), "prop_embed": f(emb), "prop_mask": f(mask),
                "track_query": f(self.query), "track_box": f(tbox), "track_embed": f(self.embed),
                "track_miss": f(self.miss), "track_mask": f(self.valid), "semantic": f(sem),
                "w": np.array([[w]], np.float32)}

    def step(self, dets: Detections, semantic: np.ndarray | None = None, w: float = 0.0, gap: int = 1) -> Detections:
        """One frame: feed, infer, associate, update slots; the reported tracks with `track_id`.
        `gap`: source frames since the previous step (> 1 when a live source dropped frames): the
        motion model predicts over that many frames; misses and lifetimes still count steps."""
        self.gap = max(int(gap), 1)
        props = self._proposals(dets)
        out = self.backend.infer(self._feed(props, semantic, w))
        prob = softmax(out["match_logits"][0].astype(np.float64))  # (S, P+1), last = no match
        m, m_score, born, b_score = self._associate(prob, out["keep"][0], out["birth"][0], props)
        self._update(props, m, born, out)
        rows = np.concatenate([m[:, 1], born]).astype(np.int64)
        score = np.concatenate([m_score, b_score]).astype(np.float32)
        ids = np.concatenate([self.ids[m[:, 0]], self.ids[self._born_slots]])
        return self._report(props, rows, score, ids)

    def _associate(self, prob, keep, birth, props):
        """-> matches (K, 2) slot/proposal, their scores (K,), born proposals (M,), their scores (M,)."""
        raise NotImplementedError

    def _update(self, props: Detections, m: np.ndarray, born: np.ndarray, out: dict) -> None:
        cfg = self.cfg
        matched = np.zeros(self.S, bool)
        matched[m[:, 0]] = True
        new_box = self.box.copy()
        new_box[m[:, 0]] = props.xyxy[m[:, 1]]
        span = self.since + self.gap  # (S,) source frames since each slot's last match
        a = self._smooth_weight(span)
        if np.any(a > 0):  # partial correction (as a Kalman update): a wrong match
            # moves the state only part way, so the next frame's pointer and IoU can pull the track back
            pred = predict_boxes(self.box, self.vel, span, cfg.max_predict_gap)
            new_box = (a * pred + (1 - a) * new_box).astype(np.float32)
        self.box, self.vel = update_motion(self.box, self.vel, new_box, span, matched, cfg.momentum)
        if props.feature is not None and len(m):
            mix = cfg.embed_momentum * self.embed[m[:, 0]] + (1 - cfg.embed_momentum) * props.feature[m[:, 1]]
            self.embed[m[:, 0]] = mix / np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-6)
        # only live slots count misses: a free slot's count grew with the run and broke the network's
        # masking after days (FP16: overflow after 65504 frames); it stays <= miss_tolerance + 1
        self.miss = np.where(matched, 0, self.miss + self.valid).astype(np.float32)
        self.since = np.where(matched, 0, self.since + self.gap * self.valid).astype(np.float32)
        self.hits += matched
        self.query = np.where(self.valid[:, None], out["track_query_out"][0], 0).astype(np.float32)
        self.valid &= (self.miss <= cfg.miss_tolerance) & ((self.miss == 0) | (self.hits >= cfg.tentative_hits))
        self._born_slots = self._birth(props, born, out["birth_query"][0])

    def _smooth_weight(self, frames: np.ndarray) -> float | np.ndarray:
        """Weight of the predicted box in a matched slot's new box state: the config's, whatever
        the (S,) source frames each slot's prediction spans (a subclass may return (S, 1))."""
        return getattr(self.cfg, self.smooth_field)

    def _birth(self, props: Detections, born: np.ndarray, bq: np.ndarray) -> np.ndarray:
        """Start tracks in free slots; proposals beyond the free slots are dropped (logged)."""
        free = np.flatnonzero(~self.valid)[: len(born)]
        if len(free) < len(born):  # the slot count is fixed at export: a crowd beyond it is tracked in part
            log.debug("tracker: %d births dropped, all %d slots live", len(born) - len(free), self.S)
            log_once(log.name, logging.WARNING, f"tracker: more people than its {self.S} track slots; new "
                     "people go untracked until a slot frees (a crowd this size wants --tracker bytetrack, "
                     "which has no slot limit)")
        p = born[: len(free)]
        self.valid[free], self.box[free], self.vel[free], self.miss[free], self.since[free] = True, props.xyxy[p], 0, 0, 0
        self.hits[free] = 0
        self.embed[free] = props.feature[p] if props.feature is not None else 0
        self.query[free] = bq[p]
        self.ids[free] = np.arange(self.next_id, self.next_id + len(free))
        self.next_id += len(free)
        return free

    def _report(self, props: Detections, rows, score, ids) -> Detections:
        """Tracks whose `score` (the tracker's, per row) reaches output_score, with the score
        `_shown_score` gives (rows: proposals; births beyond free slots are cut here)."""
        rows, score = rows[: len(ids)], score[: len(ids)]
        box = props.xyxy[rows]
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        ok = (score >= self.cfg.output_score) & (area >= self.cfg.min_area)
        feat = None if props.feature is None or not ok.any() else props.feature[rows][ok]  # (0, E) is refused
        return Detections(box[ok], self._shown_score(props, rows, score)[ok], ids[ok], feat)

    def _shown_score(self, props: Detections, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
        """The score a reported track carries (MOT conf, JSONL score): the tracker's own."""
        return score


class E2ETracker(_SlotTracker):
    """Identity from the network: pointer argmax + keep score; births from the birth score."""

    def _associate(self, prob, keep, birth, props):
        cfg, n = self.cfg, len(props)
        choice = prob.argmax(1)  # (S,)
        cand = np.flatnonzero(self.valid & (choice < n) & (keep >= cfg.keep))
        cand = cand[np.argsort(-prob[cand, choice[cand]], kind="stable")]  # highest probability first
        taken: set[int] = set()
        m = []
        for s in cand:
            if int(choice[s]) not in taken:  # two tracks on one proposal: the likelier one wins
                taken.add(int(choice[s]))
                m.append((s, choice[s]))
        m = np.array(m, np.int64).reshape(-1, 2)
        order = np.argsort(-birth[:n], kind="stable")
        born = np.array([p for p in order if birth[p] >= cfg.birth and p not in taken], np.int64)
        return m, keep[m[:, 0]], born, birth[born]


class HybridTracker(_SlotTracker):
    """ByteTrack-style two-stage matching on the network's pointer probabilities (cost 1 - p),
    optionally fused with / gated by the IoU between each track's predicted box and a detection."""

    smooth_field = "box_smooth"

    def _associate(self, prob, keep, birth, props):
        cfg = self.cfg
        slots = np.flatnonzero(self.valid)
        cost, iou = self._cost(prob, slots, props)  # (L, n) each
        high = np.flatnonzero(props.score >= cfg.high_score)
        low = np.flatnonzero(props.score < cfg.high_score)
        m1, rest, free_high = linear_assignment(cost[:, high], 1.0 - cfg.match_prob)
        if cfg.low_stage == "iou":
            m2, _, _ = linear_assignment(1.0 - iou[rest][:, low], 1.0 - cfg.low_iou)
        else:
            m2, _, _ = linear_assignment(cost[rest][:, low], 1.0 - cfg.match_prob)
        m = np.concatenate([np.stack([slots[m1[:, 0]], high[m1[:, 1]]], 1),
                            np.stack([slots[rest[m2[:, 0]]], low[m2[:, 1]]], 1)]).astype(np.int64).reshape(-1, 2)
        cand = high[free_high]
        born = cand[props.score[cand] >= cfg.new_score]
        born = born[np.argsort(-props.score[born], kind="stable")]
        return m, np.ones(len(m), np.float32), born, props.score[born]  # a matched track is always reported

    def _shown_score(self, props: Detections, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
        """The detection's score, as ByteTrack reports (the 1.0 that reports every match is no confidence)."""
        return props.score[rows]

    def _cost(self, prob, slots, props) -> tuple[np.ndarray, np.ndarray | None]:
        """(L, n) association cost of live slots x proposals, and their predicted-box IoU (None when
        no option reads it: the shipped default, so the per-frame step computes no IoU)."""
        cfg, n = self.cfg, len(props)
        if cfg.iou_weight == 0 and cfg.min_iou == 0 and cfg.low_stage == "pointer":
            return 1.0 - prob[slots][:, :n], None
        iou = self.predicted_iou(slots, props)
        sim = (1.0 - cfg.iou_weight) * prob[slots][:, :n] + cfg.iou_weight * iou
        cost = np.where(iou >= cfg.min_iou, 1.0 - sim, np.inf) if cfg.min_iou > 0 else 1.0 - sim
        return cost, iou

    def predicted_iou(self, slots: np.ndarray, props: Detections) -> np.ndarray:
        """(L, n) IoU of the live slots' motion-predicted boxes with the proposals, in [0, 1]."""
        pred = predict_boxes(self.box[slots], self.vel[slots], self.since[slots] + self.gap, self.cfg.max_predict_gap)
        return box_iou(pred, props.xyxy).reshape(len(slots), len(props))
