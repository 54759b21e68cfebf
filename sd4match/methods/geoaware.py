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
    #: a head trained here brings the feature settings it was trained on (``benchmarks.run``)
    checkpoint_setting = "head"

    @classmethod
    def settings_from_checkpoint(cls, path: str) -> dict:
        from .geoaware_head import trained_settings

        return {} if path == "random" else trained_settings(path, "geoaware")

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

    #: a :class:`~sd4match.training.head_features.FeatureCache` of the head's inputs (head training
    #: plugs its cache in here, so that validation runs this very path without a backbone)
    input_cache = None

    def _zero_shot(self, layers: tuple[torch.Tensor, ...], dino: torch.Tensor) -> torch.Tensor:
        s5, s4, s3 = layers
        g = dino.shape[-1]
        up = lambda x: x if x.shape[-1] == g else F.interpolate(x[None], size=(g, g), mode="bilinear",  # noqa: E731
                                                                  align_corners=False)[0]
        sd = F.normalize(torch.cat([up(s3), up(s4), up(s5)]), dim=0)
        return F.normalize(torch.cat([sd, F.normalize(dino.float(), dim=0)]), dim=0)

    def head_inputs(self, images, infos, flip: bool = False) -> list[torch.Tensor]:
        """The head's input per image: s3, s4, s5 and the DINO map gathered in the authors' order
        (:func:`~sd4match.methods.geoaware_head.gather`), ``(sum C, g, g)``."""

        def compute(positions):
            ims, inf = [images[i] for i in positions], [infos[i] for i in positions]
            out = []
            for (s5, s4, s3), d in zip(self.sd_layers(ims, inf, flip), self.dino_maps(ims, inf, flip)):
                self._widths = [int(x.shape[0]) for x in (s3, s4, s5, d)]
                out.append(gather(s3, s4, s5, d))
            return out

        if self.input_cache is not None:
            return self.input_cache.get(infos, flip, compute)
        return compute(list(range(len(images))))

    def through_head(self, x: torch.Tensor) -> torch.Tensor:
        widths = self.head_widths(x)
        head = self.head_for(widths)
        if widths != list(head.feature_dims):
            raise MatcherError(f"{self.config.head}: the head takes inputs of widths {list(head.feature_dims)}, the "
                               f"features of this model are {widths} (s3, s4, s5, DINO); a head for the real models "
                               "needs the real SD-1.5 and DINOv2-B/14, not the tiny preset")
        return descriptors(head([x]))

    def head_widths(self, x: torch.Tensor) -> list[int]:
        """The widths of the groups of a gathered input (s3, s4, s5, DINO)."""
        widths = getattr(self, "_widths", None) or getattr(self.input_cache, "widths", None)
        if not widths or sum(widths) != int(x.shape[0]):
            raise MatcherError(f"a gathered head input of {int(x.shape[0])} channels does not split into the "
                               f"recorded group widths {widths}")
        return list(widths)

    def image_maps(self, images, infos, flip: bool = False):
        if not self.config.head:
            return [self._zero_shot(lay, d) for lay, d in zip(self.sd_layers(images, infos, flip),
                                                               self.dino_maps(images, infos, flip))]
        return [self.through_head(x) for x in self.head_inputs(images, infos, flip)]


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
