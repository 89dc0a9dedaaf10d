"""Real TRAIN clips for tracker fine-tuning, with what inference feeds: real q and student vectors.

Cached detections (`noise_model.detect_sequence`) of PETS09-S2L1 frames 1-600 and MOT17-mini,
clean and degraded, identities from Hungarian matching to gt; per frame, the shipped quality
gate's q and the shipped student's vector on the *same* (degraded) frame
(`noise_model.semantics_sequence`). Never PETS 601-795 or TUD-Campus. PETS frames from
`val_first` on are left out, so they can validate the fine-tuning on the training side.

`SemanticBank` lends the same real (q, vector) runs to synthetic clips, so fine-tuning sees one
semantic distribution instead of stand-ins for synthetic and real vectors for real clips.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vsdmot.paths import data_root

from .synth import SynthFrame, _Semantics
from .trainframes import VAL_FIRST

log = logging.getLogger(__name__)


class SemanticBank:
    """Per-frame (q, vector) runs of the real TRAIN sequences, split by condition."""

    def __init__(self):
        self.runs: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {False: [], True: []}  # degraded -> [(q (N,), sem (N,D))]

    def add(self, degraded: bool, q: np.ndarray, sem: np.ndarray) -> None:
        if len(q):
            self.runs[degraded].append((q.astype(np.float32), sem.astype(np.float32)))

    def draw(self, T: int, degraded: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(T,) q and (T, D) vectors: T consecutive frames (cyclic for short sequences) of one
        sequence of that condition, sequences drawn uniformly (MOT17-mini's few frames count)."""
        q, sem = self.runs[degraded][int(rng.integers(len(self.runs[degraded])))]
        idx = (int(rng.integers(len(q))) + np.arange(T)) % len(q)
        return q[idx], sem[idx]

    def lend(self, clip: list[SynthFrame], rng: np.random.Generator) -> None:
        """Replace a synthetic clip's stand-in (q, vector) by a real run; a clip of quality q
        borrows a degraded run with probability 1 - q (semantics-off clips stay off)."""
        if not clip or clip[0].q < 0:
            return
        q, sem = self.draw(len(clip), bool(rng.random() >= clip[0].q), rng)
        for f, qi, si in zip(clip, q, sem):
            f.q, f.semantic = float(qi), si


class RealClips:
    """Windows of real TRAIN clips as `SynthFrame` lists (see module doc)."""

    def __init__(self, data: str | Path, embed_dim: int, semantic_dim: int, real_semantics: bool = True,
                 val_first: int = VAL_FIRST, det=None, sem=None):
        from .noise_model import ShippedSemantics, detect_sequence, load_gt, project_detector, train_sequences
        from .noise_model import semantics_sequence

        det = det or project_detector()
        sem = sem or ShippedSemantics()
        self.real_semantics = real_semantics
        self.bank = SemanticBank()
        self.seqs = []  # (frames list, degraded flag)
        for seq, frames in train_sequences(Path(data)):
            gt = load_gt(seq)
            last = val_first - 1 if seq.name.startswith("PETS") else 10**9
            for deg in (False, True):
                npz = np.load(detect_sequence(det, seq, frames, deg))
                s = np.load(semantics_sequence(sem, seq, frames, deg))
                keep = s["frame"] <= last
                self.bank.add(deg, s["q"][keep], s["semantic"][keep])
                self.seqs.append((self._frames(npz, s, gt, embed_dim, last), deg))
        self.standin = _Semantics(semantic_dim)
        qs = {d: np.concatenate([r[0] for r in self.bank.runs[d]]) for d in (False, True)}
        log.info("real clips: %d sequences, %d frames; q clean median %.2f, degraded median %.2f",
                 len(self.seqs), sum(len(f) for f, _ in self.seqs), np.median(qs[False]), np.median(qs[True]))

    @staticmethod
    def _frames(npz, sem, gt: dict, E: int, last: int) -> list[SynthFrame]:
        """One SynthFrame per frame the caches hold (frames with gt, up to `last`); q and vector
        are the real ones (SynthFrame.q, .semantic)."""
        from .noise_model import match_to_gt

        out = []
        for f, q, vec in zip(sem["frame"].tolist(), sem["q"], sem["semantic"]):
            if f > last or f not in gt:
                continue
            sel = npz["frame"] == f
            xyxy, score, emb = npz["xyxy"][sel].reshape(-1, 4), npz["score"][sel], npz["embed"][sel].reshape(-1, E)
            ids, g = gt[f]
            gid = np.full(len(score), -1)
            m = match_to_gt(g, xyxy)
            gid[m[m >= 0]] = ids[m >= 0]
            out.append(SynthFrame(xyxy.astype(np.float32), score.astype(np.float32), emb.astype(np.float32), gid,
                                  vec.astype(np.float32), 0.0, g, ids, float(q)))
        return out

    def sample(self, T: int, rng: np.random.Generator) -> list[SynthFrame]:
        """A window of up to T frames (temporal stride 1-2, mirrored half the time); in 15 % of
        clips semantics are off (zeros, q = -1: w = 0, the runtime's `never` / skipped case)."""
        frames, deg = self.seqs[int(rng.integers(len(self.seqs)))]
        stride = int(rng.integers(1, 3)) if len(frames) > 2 * T else 1
        span = min(len(frames), T * stride)
        start = int(rng.integers(0, len(frames) - span + 1))
        clip = frames[start: start + span: stride]
        q_standin = rng.uniform(0.05, 0.5) if deg else rng.uniform(0.7, 1.0)
        off = rng.random() < 0.15
        flip = rng.random() < 0.5
        return [self._aug(f, q_standin, off, flip, rng) for f in clip]

    def _aug(self, f: SynthFrame, q_standin: float, off: bool, flip: bool, rng) -> SynthFrame:
        xyxy = f.xyxy.copy()
        if flip:  # mirror about x = 0: relative features see a mirrored scene
            xyxy[:, [0, 2]] = -xyxy[:, [2, 0]]
        q, sem = (f.q, f.semantic) if self.real_semantics else (q_standin, self.standin(q_standin, rng))
        if off:
            q, sem = -1.0, np.zeros_like(sem)
        return SynthFrame(xyxy, f.score, f.embed, f.gid, sem, 0.0, f.gt_xyxy, f.gt_id, q)


def w_on_train(dswr, data: str | Path = str(data_root()), policy: str = "auto", head=None) -> dict:
    """Where DSWR's w lands on the TRAIN frames, clean vs degraded (the shipped gate's real q):
    mean w, share of frames with w >= the runtime's eps_on, and the runtime policy's skip share.
    With the tracker `head`: mean |proj(s)| and |w proj(s)| of the student's vectors (a query's
    norm is ~sqrt(d) = 8), i.e. how much the fusion can move a query."""
    from vsdmot.runtime.config import SemanticsConfig

    from .noise_model import ShippedSemantics, semantics_sequence, train_sequences
    from .reference import CachedSemantics

    sem, eps_on = ShippedSemantics(), SemanticsConfig().eps_on
    out = {}
    for deg in (False, True):
        ws, skipped, n, pn = [], 0, 0, []
        for seq, frames in train_sequences(Path(data)):
            path = semantics_sequence(sem, seq, frames, deg)
            pn += _proj_norms(head, np.load(path)["semantic"]) if head is not None else []
            cs = CachedSemantics(path, dswr, policy)  # the runtime's DSWR and policy over the cached q
            for f in cs.q:
                cs.get(f)
            ws += cs.w
            skipped, n = skipped + cs.policy.counts.skipped, n + len(cs.q)
        w = np.array(ws)
        out["degraded" if deg else "clean"] = {"frames": n, "w_mean": round(float(w.mean()), 3),
                                               "w_p90": round(float(np.quantile(w, 0.9)), 3),
                                               "share_w_ge_eps_on": round(float((w >= eps_on).mean()), 3),
                                               "auto_skip_share": round(skipped / max(n, 1), 3)}
        if pn:
            out["degraded" if deg else "clean"].update(proj_norm=round(float(np.mean(pn)), 3),
                                                       w_proj_norm=round(float(np.mean(w * np.array(pn))), 3))
    return out


def _proj_norms(head, vecs: np.ndarray) -> list[float]:
    """|proj(s)| per vector (N, D) through the head's fusion projection."""
    import torch

    with torch.no_grad():
        return head.project(torch.from_numpy(np.asarray(vecs, np.float32))).norm(dim=-1).tolist()


def main(argv: list[str] | None = None) -> int:
    """python -m vsdmot.models.realclips [TRACKER.pt]: w and auto skips on TRAIN frames."""
    import argparse

    from vsdmot._cli import run_main

    ap = argparse.ArgumentParser(prog="python -m vsdmot.models.realclips", description=main.__doc__)
    ap.add_argument("tracker", nargs="?", default=None, help="tracker checkpoint (default: the shipped one)")
    ap.set_defaults(func=_run)
    return run_main(ap, argv)  # bad input: one line and exit 2, not a traceback


def _run(a) -> int:
    import json

    from vsdmot.runtime.dswr import Dswr

    from .train_tracker import SHIPPED, load_tracker

    head, meta = load_tracker(a.tracker or SHIPPED)
    d = Dswr.from_params(meta.get("dswr", {}))
    print(json.dumps({"dswr": d.params(), "fusion": meta.get("fusion", {"form": "linear"}),
                      **w_on_train(d, head=head)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
