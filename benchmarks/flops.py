"""FLOP counting with ``torch.utils.flop_counter``, attention included on every device.

PyTorch's counter knows the CUDA scaled-dot-product-attention kernels (flash, memory-efficient,
cuDNN) but not the CPU one (``aten._scaled_dot_product_flash_attention_for_cpu``), which it
counts as 0. :func:`flop_counter` adds that kernel with the same formula as the CUDA ones
(2 matrix products: 2 B H L S E + 2 B H L S Ev), so CPU and GPU counts agree.
"""

from __future__ import annotations


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def extra_formulas() -> dict:
    import torch

    ops = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _cpu_sdpa_flops
    return ops


def flop_counter():
    """A ``FlopCounterMode`` (display off) that also counts CPU attention."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=extra_formulas())
