"""The training settings (reference recipe as defaults), presets and the training error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..backbones.dino import default_dino_id
from ..backbones.sd_models import default_model_id

DEFAULT_EPOCHS = {"spair-71k": 5, "pf-pascal": 90, "pf-willow": 1}
#: checkpoint steps live in OUT/CHECKPOINTS/step-NNNNNNNN; OUT/POINTER names the current one
CHECKPOINTS, POINTER = "checkpoints", "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    dataset: str
    data_root: str
    split: str = "trn"
    val_split: str = "val"
    model_id: str = field(default_factory=default_model_id)
    dino_id: str = field(default_factory=default_dino_id)
    dino_pos: str = "hub"
    image_size: int = 768
    t: int = 261
    ensemble: int = 1
    up_block: int = 1
    temperature: float = 0.04
    window: int = 7
    sigma: float = 1.5
    max_kps: int = 20
    lr: float = 0.01
    lr_linear: float = 0.001
    batch_size: int = 3
    epochs: int = 0  # 0: the dataset's reference number
    max_steps: int = 0  # 0: no limit
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    flip: bool = True
    val_limit: int = 0  # 0: the whole validation split
    val_every: int = 0  # steps; 0: after every epoch
    save_every: int = 50

    def __post_init__(self):

        bad = []
        for name in ("lr", "lr_linear", "temperature", "sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad.append(f"{name} must be a finite number > 0 (got {v!r})")
        if not (isinstance(self.window, int) and self.window >= 1 and self.window % 2 == 1):
            bad.append(f"window must be an odd integer >= 1 (got {self.window!r})")
        for name, low in (("max_kps", 1), ("ensemble", 1), ("batch_size", 1), ("save_every", 1), ("image_size", 16),
                          ("epochs", 0), ("max_steps", 0), ("val_limit", 0), ("val_every", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad.append(f"{name} must be an integer >= {low} (got {v!r})")
        if isinstance(self.t, bool) or not isinstance(self.t, int) or not 0 <= self.t <= 999:
            bad.append(f"t must be an integer in 0..999 (got {self.t!r})")
        if self.dino_pos not in ("hub", "transformers"):
            bad.append(f"dino_pos must be hub or transformers (got {self.dino_pos!r})")
        if bad:
            raise ValueError("; ".join(bad))

    def resolved_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS.get(self.dataset, 1)


PRESETS = {
    "tiny": {"model_id": "tiny", "dino_id": "tiny", "image_size": 64, "batch_size": 2, "val_limit": 6,
             "save_every": 5},
}


class TrainError(Exception):
    """Training cannot proceed; printed as one line."""
