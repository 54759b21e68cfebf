"""DINOv2 nearest neighbour in the padded frame, as sd-dino and GeoAware-SC run it.
"""

from __future__ import annotations

from .frame import FrameMatcher


class Dinov2Matcher(FrameMatcher):
    name = "dinov2"
    description = ("DINOv2 nearest neighbour as sd-dino / GeoAware-SC run it: ViT-B/14 block 11 tokens before the "
                   "final norm, 840 padded frame, 60 x 60 cells, argmax, cell centre 14j + 6.5")
    presets = {"tiny": {"dino_id": "tiny", "image_size": 112, "batch_size": 16},
               "geoaware": {"centre": 7.0},
               "hf-normed": {"dino_final_norm": True}}

    def image_maps(self, images, infos, flip: bool = False):
        return list(self.dino_maps(images, infos, flip))
