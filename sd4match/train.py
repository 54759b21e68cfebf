"""``python -m sd4match.train``: SD4Match prompt training (the code lives in :mod:`sd4match.training`)."""

from __future__ import annotations

import sys

from .training.cli import main
from .training.config import PRESETS, TrainConfig, TrainError
from .training.trainer import Trainer

__all__ = ["PRESETS", "TrainConfig", "TrainError", "Trainer", "main"]

if __name__ == "__main__":
    sys.exit(main())
