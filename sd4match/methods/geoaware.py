"""GeoAware-SC's zero-shot matcher (and its supervised post-processor through ``head=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError

from .geoaware_head import descriptors, gather, head_fingerprint, head_info, load_head, random_head
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
        if self.config.head and self.config.head != "random":
            self._head = load_head(self.config.head, self.device)

    def head_for(self, widths: list[int]):
        """The head (a seeded random one of these widths for ``head=random``)."""
        if self._head is None and self.config.head == "random":
            self._head = random_head(widths, 128, int(self.config.seed)).to(self.device)
        return self._head

    def describe(self) -> dict:
        out = super().describe()
        if self.config.head:
            out["head"] = head_info(self.config.head, int(self.config.seed), self._head)
        return out

    def fingerprints(self):
        out = super().fingerprints()
        if self.config.head and "head" not in out:
            out["head"] = head_fingerprint(self.config.head, int(self.config.seed))
        return out

    def descriptors(self, layers: tuple[torch.Tensor, ...], dino: torch.Tensor) -> torch.Tensor:
        s5, s4, s3 = layers
        g = dino.shape[-1]
        up = lambda x: x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear",  # noqa: E731
                                                                  align_corners=False)[0]
        parts = [up(s3), up(s4), up(s5)]
        if self.config.head:
            widths = [int(x.shape[0]) for x in parts + [dino]]
            head = self.head_for(widths)
            if widths != list(head.feature_dims):
                raise MatcherError(f"{self.config.head}: the head takes inputs of widths {list(head.feature_dims)}, the "
                                   f"features of this model are {widths} (s3, s4, s5, DINO); a head for the real models "
                                   "needs the real SD-1.5 and DINOv2-B/14, not the tiny preset")
            return descriptors(head([gather(s3, s4, s5, dino)]))
        sd = F.normalize(torch.cat(parts), dim=0)
        return F.normalize(torch.cat([sd, F.normalize(dino.float(), dim=0)]), dim=0)

    def image_maps(self, images, infos, flip: bool = False):
        return [self.descriptors(lay, d) for lay, d in zip(self.sd_layers(images, infos, flip),
                                                            self.dino_maps(images, infos, flip))]


@dataclass(frozen=True)
class GeoAwareSupervisedConfig(GeoAwareConfig):
    """GeoAware-SC supervised: the zero-shot features through the trained head (``head=``, required:
    a released file, or ``random`` in the tiny preset), descriptors divided by (norm + 1e-10); the
    authors' evaluation readout, the window soft-argmax with window 7 (argmax ``nn`` too)."""

    readout: str = "geoaware-soft-argmax,nn"
    geoaware_window: int = 7


class GeoAwareSupervisedMatcher(GeoAwareZeroShotMatcher):
    name = "geoaware"
    description = ("GeoAware-SC supervised: geoaware-zs's features (SD-1.5 s3/s4/s5 at t=50 with FreeU, DINOv2-B/14 at "
                   "840) gathered in the authors' order -> the trained aggregation head -> window soft-argmax 7")
    Config = GeoAwareSupervisedConfig
    presets = {"tiny": {**TINY_SD, "head": "random"}}

    def __init__(self, config=None):
        from .geoaware_head import require_head

        require_head(self.name, (config if config is not None else self.Config()).head, "the trained aggregation head")
        super().__init__(config)
