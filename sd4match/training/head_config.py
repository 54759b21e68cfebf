"""Settings of head training (GeoAware-SC's recipe as defaults) and its presets.

The recipe (``../shared/golden/heads/README.md``): AdamW lr 1.25e-3, weight decay 1e-3, batch 1,
input dropout 0.2, sparse + dense loss (dense temperature 0.02, no training window), Gaussian
augmentation of the target flow 0.1, pose-variant pair augmentation; validation every 5000 steps on
20 pairs per category, best head by PCK@0.1 (per image, bbox threshold, window soft-argmax 7).
Stage 1 (preset ``geoaware-ap10k``): AP-10K, 1 epoch, no scheduler. Stage 2 (``geoaware-spair``):
SPair-71k, 2 epochs from the stage-1 head (``init``), one-cycle schedule with pct_start 0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the trainable head variants and the matcher each trains a head for
HEAD_VARIANTS = {"geoaware-head": "geoaware", "diy-sc-head": "diy-sc"}
HEAD_EPOCHS = {"ap-10k": 1, "spair-71k": 2}
SCHEDULERS = ("one-cycle", "none")


@dataclass(frozen=True)
class HeadTrainConfig:
    variant: str
    dataset: str
    data_root: str
    split: str = "trn"
    val_split: str = "val"
    #: the matcher's features: its preset ("" or "tiny") and the settings that pick the weights
    feature_preset: str = ""
    model_id: str = ""  # "": the matcher's default
    dino_id: str = ""
    dino_pos: str = ""
    image_size: int = 0  # 0: the matcher's default (840)
    projection_dim: int = 768
    bottleneck: int = 0  # 0: projection_dim // 4
    init: str = ""  # a head (file or training folder) to start from, by the authors' load rule
    lr: float = 1.25e-3
    weight_decay: float = 1e-3
    dropout: float = 0.2
    scheduler: str = "none"
    pct_start: float = 0.3
    dense: bool = True
    train_window: int = 0
    gaussian: float = 0.1
    pair_augment: bool = True
    batch_size: int = 1
    epochs: int = 0  # 0: the dataset's recipe number (AP-10K 1, SPair-71k 2)
    max_steps: int = 0
    val_every: int = 5000  # steps; 0: after every epoch
    val_epoch_end: bool = True  # also at the end of every epoch, as the authors' loop does
    val_per_category: int = 20  # 0: the whole validation split
    save_every: int = 500
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: str = ""  # "": $CORRBENCH_CACHE/head-features
    cache_dtype: str = "float32"

    def __post_init__(self):
        bad = []
        for name in ("lr", "pct_start"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad.append(f"{name} must be a finite number > 0 (got {v!r})")
        for name, high in (("weight_decay", math.inf), ("gaussian", math.inf), ("dropout", 0.999)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= high:
                bad.append(f"{name} must be a number in [0, {high}] (got {v!r})")
        if isinstance(self.pct_start, (int, float)) and not self.pct_start < 1:
            bad.append(f"pct_start must be below 1 (got {self.pct_start!r})")
        for name, low in (("projection_dim", 1), ("bottleneck", 0), ("batch_size", 1), ("epochs", 0),
                          ("max_steps", 0), ("val_every", 0), ("val_per_category", 0), ("save_every", 1),
                          ("seed", 0), ("train_window", 0), ("image_size", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad.append(f"{name} must be an integer >= {low} (got {v!r})")
        if self.variant not in HEAD_VARIANTS:
            bad.append(f"variant must be one of {', '.join(HEAD_VARIANTS)} (got {self.variant!r})")
        if self.scheduler not in SCHEDULERS:
            bad.append(f"scheduler must be one of {', '.join(SCHEDULERS)} (got {self.scheduler!r})")
        if self.cache_dtype not in ("float32", "float16"):
            bad.append(f"cache_dtype must be float32 or float16 (got {self.cache_dtype!r})")
        if self.feature_preset not in ("", "tiny"):
            bad.append(f"feature_preset must be '' or tiny (got {self.feature_preset!r})")
        if isinstance(self.projection_dim, int) and isinstance(self.bottleneck, int):
            mid = self.bottleneck or self.projection_dim // 4
            if self.projection_dim % 32 or mid % 32 or mid < 32:
                bad.append(f"projection_dim ({self.projection_dim}) and the bottleneck ({mid}) must be multiples of "
                           "the head's 32 GroupNorm groups")
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def matcher(self) -> str:
        return HEAD_VARIANTS[self.variant]

    def resolved_epochs(self) -> int:
        return self.epochs or HEAD_EPOCHS.get(self.dataset, 1)

    def feature_settings(self) -> dict:
        """The matcher preset and settings the features are computed with (carried by the head file)."""
        out = {k: getattr(self, k) for k in ("model_id", "dino_id", "dino_pos", "image_size") if getattr(self, k)}
        if self.variant == "diy-sc-head":
            out.pop("model_id", None)
        if self.feature_preset:
            out["preset"] = self.feature_preset
        return out


HEAD_PRESETS = {
    # a head on the tiny random backbones: the whole pipeline offline on a CPU in seconds
    "tiny": {"feature_preset": "tiny", "projection_dim": 128, "batch_size": 2, "val_every": 4,
             "val_per_category": 2, "save_every": 4, "lr": 1e-2},
    # GeoAware-SC's recipe, stage 1: AP-10K pre-training
    "geoaware-ap10k": {"scheduler": "none", "epochs": 1},
    # stage 2: SPair-71k from the stage-1 head (init=...), one-cycle
    "geoaware-spair": {"scheduler": "one-cycle", "epochs": 2, "pct_start": 0.3},
}
