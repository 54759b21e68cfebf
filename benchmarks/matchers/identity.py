"""The floor of every leaderboard: predict the source keypoint, rescaled to the target image."""

from __future__ import annotations

import numpy as np

from .base import Matcher


class IdentityMatcher(Matcher):
    """Target keypoint = source keypoint x (target width / source width, target height / source height)."""

    name = "identity"
    description = "source keypoint rescaled to the target image size (no model, no pixels)"
    presets = {"tiny": {}}

    def predict(self, pairs):
        out = []
        for p in pairs:
            (sw, sh), (tw, th) = p.src_size, p.trg_size
            out.append(p.src_kps * np.array([tw / sw, th / sh]))
        return {"none": out}

    @property
    def readouts(self):
        return ("none",)
