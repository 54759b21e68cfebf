"""GeoAware-SC's supervised post-processor (``AggregationNetwork``), as ``baselines.md`` 3.5 describes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError


class _Bottleneck(torch.nn.Module):
    """1x1 -> 192, 3x3 192 -> 192, 1x1 -> 768, GroupNorm(32) after each conv, ReLU between, and a
    1x1 projection shortcut when the input is not 768 wide."""

    def __init__(self, cin: int, cout: int = 768, mid: int = 192):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = torch.nn.GroupNorm(32, mid)
        self.conv2 = torch.nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.norm2 = torch.nn.GroupNorm(32, mid)
        self.conv3 = torch.nn.Conv2d(mid, cout, 1, bias=False)
        self.norm3 = torch.nn.GroupNorm(32, cout)
        self.shortcut = None if cin == cout else torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, bias=False),
                                                                      torch.nn.GroupNorm(32, cout))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class AggregationHead(torch.nn.Module):
    """GeoAware-SC's supervised post-processor as ``baselines.md`` 3.5 describes it: one bottleneck
    block per input group ([640, 1280, 1280, 768] -> 768 each), summed with softmax-normalised
    mixing weights (4 scalars, initialised to 1). Input: the list of (C_i, g, g) maps."""

    def __init__(self, feature_dims=(640, 1280, 1280, 768), projection_dim: int = 768):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Bottleneck(c, projection_dim) for c in feature_dims)
        self.mixing = torch.nn.Parameter(torch.ones(len(feature_dims)))

    def forward(self, parts):
        w = torch.softmax(self.mixing, dim=0)
        return sum(w[i] * blk(x[None].float())[0] for i, (blk, x) in enumerate(zip(self.blocks, parts)))


def _head_file(path: str):
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise MatcherError(f"{path}: no GeoAware head checkpoint there (the supervised post-processor, e.g. "
                           "results_spair/best_856.PTH of the GeoAware-SC release); set head= to its path or leave it empty")
    return p


def load_head(path: str, device) -> AggregationHead:
    """An :class:`AggregationHead` state dict from ``path`` (``torch.load`` with ``weights_only``);
    a missing file or a state dict that does not fit is a one-line :class:`MatcherError`."""
    from ..convert import read_tensors

    state = read_tensors(_head_file(path), "the GeoAware head checkpoint")
    head = AggregationHead()
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # the names fit, the shapes do not
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise MatcherError(f"{path}: the state dict's shapes do not fit this toolkit's AggregationHead ({first[:200]})") from None
    if missing or unexpected:
        raise MatcherError(f"{path}: the state dict does not fit this toolkit's AggregationHead "
                           f"({len(missing)} missing keys, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]}); "
                           "the released file's key names are UNCONFIRMED")
    return head.to(device).eval().requires_grad_(False)
