"""DINOv2 nearest neighbour in the padded frame, as sd-dino and GeoAware-SC run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.matchers.base import MatcherError

from .frame import FrameConfig, FrameMatcher


class Dinov2Matcher(FrameMatcher):
    name = "dinov2"
    description = ("DINOv2 nearest neighbour as sd-dino / GeoAware-SC run it: ViT-B/14 block 11 tokens before the "
                   "final norm, 840 padded frame, 60 x 60 cells, argmax, cell centre 14j + 6.5")
    presets = {"tiny": {"dino_id": "tiny", "image_size": 112, "batch_size": 16},
               "geoaware": {"centre": 7.0},
               "hf-normed": {"dino_final_norm": True}}

    def image_maps(self, images, infos, flip: bool = False):
        return list(self.dino_maps(images, infos, flip))


@dataclass(frozen=True)
class DiySCConfig(FrameConfig):
    """DIY-SC: the dinov2 matcher's tokens (ViT-B/14 block 11, token facet, 840 padded frame: what
    DIY-SC's ``preprocess_map.py`` stores) through its trained adapter (``head=``: a released DINOv2
    adapter, 768 / 384 / 128 wide, or ``random`` in the tiny preset); descriptors divided by (norm +
    1e-10); the window soft-argmax (GeoAware's evaluation code, window 7: UNCONFIRMED which window
    DIY-SC's own evaluation sets) and the argmax; cell centre 14u + 7 (GeoAware's code)."""

    centre: float = 7.0
    readout: str = "geoaware-soft-argmax,nn"
    geoaware_window: int = 7
    head: str = ""


class DiySCMatcher(FrameMatcher):
    name = "diy-sc"
    description = ("DIY-SC: DINOv2-B/14 block-11 tokens in the 840 padded frame -> its trained adapter -> normalised "
                   "descriptors -> window soft-argmax")
    Config = DiySCConfig
    presets = {"tiny": {"dino_id": "tiny", "image_size": 112, "batch_size": 16, "head": "random"}}
    #: a head trained here brings the feature settings it was trained on (``benchmarks.run``)
    checkpoint_setting = "head"

    @classmethod
    def settings_from_checkpoint(cls, path: str) -> dict:
        from .geoaware_head import trained_settings

        return {} if path == "random" else trained_settings(path, "diy-sc")

    def __init__(self, config=None):
        from .geoaware_head import load_head, require_head

        require_head(self.name, (config if config is not None else self.Config()).head, "DIY-SC's trained adapter")
        super().__init__(config)
        self._head = load_head(self.config.head, self.device) if self.config.head != "random" else None

    def fingerprints(self):
        from .geoaware_head import head_fingerprint

        out = super().fingerprints()
        if "head" not in out:
            out["head"] = head_fingerprint(self.config.head, int(self.config.seed))
        return out

    def describe(self) -> dict:
        from .geoaware_head import head_info

        return {**super().describe(), "head": head_info(self.config.head, int(self.config.seed), self._head)}

    #: a :class:`~sd4match.training.head_features.FeatureCache` of the adapter's inputs (head training)
    input_cache = None

    def head_inputs(self, images, infos, flip: bool = False) -> list[torch.Tensor]:
        """The adapter's input per image: the DINOv2 token map ``(C, g, g)``."""

        def compute(positions):
            maps = list(self.dino_maps([images[i] for i in positions], [infos[i] for i in positions], flip))
            self._widths = [int(maps[0].shape[0])]
            return maps

        if self.input_cache is not None:
            return self.input_cache.get(infos, flip, compute)
        return compute(list(range(len(images))))

    def head_widths(self, x: torch.Tensor) -> list[int]:
        return [int(x.shape[0])]

    def head_for(self, widths: list[int]):
        from .geoaware_head import random_head

        if self._head is None:
            self._head = random_head(widths, 128, int(self.config.seed)).to(self.device)
        return self._head

    def image_maps(self, images, infos, flip: bool = False):
        from .geoaware_head import descriptors

        out = []
        for x in self.head_inputs(images, infos, flip):
            head = self.head_for(self.head_widths(x))
            want = list(head.feature_dims)
            if [int(x.shape[0])] != want:
                raise MatcherError(f"{self.config.head}: the adapter takes {want[0]}-wide tokens, this DINOv2 gives "
                                   f"{int(x.shape[0])} (DIY-SC's DINOv2 adapters need ViT-B/14)")
            out.append(descriptors(head([x])))
        return out
