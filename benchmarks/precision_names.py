"""Devices and precisions: names, resolution of ``auto`` and of autocast, the name a result records."""

from __future__ import annotations

import torch

from .matchers.base import ConfigError, MatcherError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
#: precisions that keep the weights in float32 and run the networks under ``torch.autocast`` (as
#: SD4Match's evaluation does: float16 autocast on CUDA), as opposed to casting the weights
AUTOCAST = {"float16-autocast": torch.float16, "bfloat16-autocast": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MatcherError(f"--device {name} requested but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MatcherError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:N")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    """The dtype the weights are stored in (float32 under autocast)."""
    if name in AUTOCAST:
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid: auto, float32, float16, bfloat16, "
                          f"{', '.join(AUTOCAST)}")
    return DTYPES[name]


def resolve_autocast(name: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a precision name, or None (no autocast)."""
    return AUTOCAST.get(name)


def resolve_auto(gpu_dtype: str, device: str) -> str:
    """What ``dtype=auto`` means for a matcher whose authors evaluated on GPUs in ``gpu_dtype``:
    that precision on a CUDA device, float32 on the CPU."""
    return gpu_dtype if str(device).startswith("cuda") else "float32"


def precision_name(dtype: torch.dtype, autocast: torch.dtype | None = None) -> str:
    """The name a results row records: float32, float16, bfloat16, float16-autocast or bfloat16-autocast."""
    if autocast is not None:
        return str(autocast).replace("torch.", "") + "-autocast"
    return str(dtype).replace("torch.", "")
