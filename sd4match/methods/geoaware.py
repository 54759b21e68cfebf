"""GeoAware-SC's zero-shot matcher (and its supervised post-processor through ``head=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError

from .geoaware_head import _head_file, load_head
from .sd_frame import TINY_SD, SDFrameConfig, SDFrameMatcher


@dataclass(frozen=True)
class GeoAwareConfig(SDFrameConfig):
    """GeoAware-SC zero-shot: t 50, FreeU by GeoAware's channel rule, window soft-argmax (window 5, beta 0.02), cell centre 7;
    head: a GeoAware post-processor checkpoint (the supervised variant's ``AggregationNetwork`` state
    dict, loaded with ``weights_only``), or "" for the zero-shot features."""

    t: int = 50
    freeu: str = "geoaware"
    centre: float = 7.0
    readout: str = "geoaware-soft-argmax"
    geoaware_window: int = 5
    head: str = ""


class GeoAwareZeroShotMatcher(SDFrameMatcher):
    name = "geoaware-zs"
    description = ("GeoAware-SC zero-shot: SD-1.5 decoder blocks 2/5/8 at t=50 with FreeU (960 frame, 512 windows, no PCA) "
                   "+ DINOv2-B block 11; SD and DINO parts L2-normalised, then the whole; window soft-argmax 5")
    Config = GeoAwareConfig
    presets = {"tiny": {**TINY_SD}, "supervised-eval": {"geoaware_window": 7}}

    def __init__(self, config=None):
        super().__init__(config)
        self._head = None
        if self.config.head:
            self._head = load_head(self.config.head, self.device)

    def fingerprints(self):
        out = super().fingerprints()
        if self.config.head and "head" not in out:
            from benchmarks.fingerprint import file_digest

            path = _head_file(self.config.head)
            try:
                out["head"] = file_digest(path, {})
            except OSError as exc:
                raise MatcherError(f"{self.config.head}: cannot read the GeoAware head checkpoint ({exc.strerror or exc})") from None
        return out

    def descriptors(self, layers: tuple[torch.Tensor, ...], dino: torch.Tensor) -> torch.Tensor:
        s5, s4, s3 = layers
        g = dino.shape[-1]
        up = lambda x: x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear",  # noqa: E731
                                                                  align_corners=False)[0]
        parts = [up(s3), up(s4), up(s5)]
        if self._head is not None:
            widths = [int(x.shape[0]) for x in parts + [dino]]
            want = [int(b.conv1.in_channels) for b in self._head.blocks] if hasattr(self._head, "blocks") else widths
            if widths != want:
                raise MatcherError(f"{self.config.head}: the head takes inputs of widths {want}, the features of this "
                                   f"model are {widths} (s3, s4, s5, DINO); a head for the real models needs the real "
                                   "SD-1.5 and DINOv2-B/14, not the tiny preset")
            return F.normalize(self._head(parts + [dino.float()]), dim=0)
        sd = F.normalize(torch.cat(parts), dim=0)
        return F.normalize(torch.cat([sd, F.normalize(dino.float(), dim=0)]), dim=0)

    def image_maps(self, images, infos, flip: bool = False):
        return [self.descriptors(lay, d) for lay, d in zip(self.sd_layers(images, infos, flip),
                                                            self.dino_maps(images, infos, flip))]
