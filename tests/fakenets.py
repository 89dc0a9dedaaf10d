"""A fake tracker network with tracker.onnx's inputs and outputs, for tracker logic tests."""

from __future__ import annotations

import numpy as np

from vsdmot.runtime.tracking import box_iou
from vsdmot.runtime.types import TensorSpec


class IouNet:
    """A fake tracker network with the real I/O: each live slot points at the proposal its fed
    track_box overlaps most (IoU >= 0.3); keep and birth are the proposal's score."""

    P, S, D = 6, 4, 3
    inputs = {n: TensorSpec(n, sh, "float32") for n, sh in (("prop_box", (1, 6, 4)), ("track_query", (1, 4, 3)),
                                                             ("prop_embed", (1, 6, 2)), ("semantic", (1, 5)))}

    def __init__(self):
        self.feeds = []

    def infer(self, feed):
        self.feeds.append(feed)
        P, S = self.P, self.S
        pm, tm, score = feed["prop_mask"][0] > 0, feed["track_mask"][0] > 0, feed["prop_score"][0]
        iou = box_iou(feed["track_box"][0], feed["prop_box"][0]) * pm[None]  # (S, P)
        hit = (iou.max(1) >= 0.3) & tm
        logits = np.full((S, P + 1), -10.0, np.float32)
        logits[np.arange(S), np.where(hit, iou.argmax(1), P)] = 10.0
        return {"match_logits": logits[None], "keep": (hit * score[iou.argmax(1)])[None].astype(np.float32),
                "birth": (score * pm)[None].astype(np.float32), "track_query_out": np.zeros((1, S, self.D), np.float32),
                "birth_query": np.zeros((1, P, self.D), np.float32)}
