"""The trained aggregation head shared by GeoAware-SC (supervised), DIY-SC, JamaisVu and DistillDIFT's
evaluation, in its authors' layout (``../shared/golden/heads/README.md`` gives every fact used here).

One stage per input group, each a bottleneck block: ``conv1`` 1x1 (in -> B), ``conv2`` 3x3 padding 1
(B -> B), ``conv3`` 1x1 (B -> P), every conv without bias and followed by a GroupNorm stored inside it
as ``convN.norm``; ReLU after conv1's and conv2's norms; a ``shortcut`` (1x1 conv + GroupNorm) when
in != P; ReLU after the residual sum. Output = sum_i softmax(``mixing_weights``)_i x stage_i(group_i).
``logit_scale`` and ``self_logit_scale`` are kept with the head (the training loss reads the first).
Keys: ``bottleneck_layers.{i}.0.{conv1,conv2,conv3,shortcut}.{weight,norm.weight,norm.bias}``.

Widths come from the file: the input groups (``feature_dims``), the projection P and the bottleneck B
from the conv shapes, so a head of any size loads (GeoAware-SC's [640, 1280, 1280, 768] -> 768,
DIY-SC's DINOv2 adapters [768] -> 768 / 384 / 128, the small test heads).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError

#: GroupNorm groups of the authors' head (not stored in a state dict: a setting)
NORM_GROUPS = 32
#: the descriptors' normalisation, x / (||x|| + 1e-10), as the authors' ``normalize_feats``
DESC_EPS = 1e-10
#: where the authors' releases are published (the error of a missing head names them)
RELEASES = ("GeoAware-SC supervised: results_spair/best_856.PTH of the GeoAware-SC release (Junyi42/GeoAware-SC); "
            "DIY-SC: ckpts/0300_dino_spair/best.pth and its siblings (odunkel/DIY-SC, CC0)")


class _NormConv(torch.nn.Module):
    """A bias-free convolution with its GroupNorm stored inside it (``weight``, ``norm.*``)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(cout, cin, k, k))
        torch.nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.norm = torch.nn.GroupNorm(groups, cout)
        self.padding = k // 2

    def forward(self, x):
        return self.norm(F.conv2d(x, self.weight, padding=self.padding))


class _Bottleneck(torch.nn.Module):
    def __init__(self, cin: int, cout: int, mid: int, groups: int):
        super().__init__()
        self.conv1 = _NormConv(cin, mid, 1, groups)
        self.conv2 = _NormConv(mid, mid, 3, groups)
        self.conv3 = _NormConv(mid, cout, 1, groups)
        self.shortcut = _NormConv(cin, cout, 1, groups) if cin != cout else None

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        y = self.conv3(y)
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class AggregationHead(torch.nn.Module):
    """The head (see the module docstring). ``forward`` takes the concatenated groups ``(N, sum(dims),
    h, w)`` (or a list of ``(C_i, h, w)`` maps) and returns ``(N, P, h, w)`` (or ``(P, h, w)``)."""

    def __init__(self, feature_dims=(640, 1280, 1280, 768), projection_dim: int = 768,
                 bottleneck_channels: int | None = None, norm_groups: int = NORM_GROUPS):
        super().__init__()
        self.feature_dims = tuple(int(d) for d in feature_dims)
        self.projection_dim = int(projection_dim)
        self.bottleneck_channels = int(bottleneck_channels or projection_dim // 4)
        self.norm_groups = int(norm_groups)
        self.bottleneck_layers = torch.nn.ModuleList(
            torch.nn.Sequential(_Bottleneck(c, self.projection_dim, self.bottleneck_channels, self.norm_groups))
            for c in self.feature_dims)
        self.mixing_weights = torch.nn.Parameter(torch.ones(len(self.feature_dims)))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.self_logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, x):
        single = isinstance(x, (list, tuple))
        if single:
            x = torch.cat([p.float() for p in x])[None]
        if x.shape[1] != sum(self.feature_dims):
            raise MatcherError(f"the head takes {sum(self.feature_dims)} input channels {list(self.feature_dims)}, "
                               f"got {x.shape[1]}")
        w = torch.softmax(self.mixing_weights, dim=0)
        out, start = 0, 0
        for i, (stage, c) in enumerate(zip(self.bottleneck_layers, self.feature_dims)):
            out = out + w[i] * stage(x[:, start:start + c].float())
            start += c
        return out[0] if single else out

    def describe(self) -> dict:
        return {"feature_dims": list(self.feature_dims), "projection_dim": self.projection_dim,
                "bottleneck_channels": self.bottleneck_channels, "norm_groups": self.norm_groups}


def descriptors(out: torch.Tensor) -> torch.Tensor:
    """``(P, h, w)`` head output -> the same map with every cell divided by (L2 norm + 1e-10)."""
    return out / (out.norm(dim=0, keepdim=True) + DESC_EPS)


def gather(s3: torch.Tensor, s4: torch.Tensor, s5: torch.Tensor, dino: torch.Tensor) -> torch.Tensor:
    """GeoAware's input order: s3, s4, s5, then the DINO map, the SD maps resized bilinearly
    (align_corners False) to the DINO grid (s3's own at the real sizes: both 60 x 60);
    ``(C, h, w)`` maps -> ``(sum C, h, w)``."""
    hw = dino.shape[-2:]
    up = lambda x: x if x.shape[-2:] == hw else F.interpolate(x[None].float(), size=hw, mode="bilinear",  # noqa: E731
                                                               align_corners=False)[0]
    return torch.cat([up(s3).float(), up(s4).float(), up(s5).float(), dino.float()])


_STAGE = re.compile(r"bottleneck_layers\.(\d+)\.0\.(conv1|conv2|conv3|shortcut)\.(weight|norm\.weight|norm\.bias)")
_SCALARS = ("mixing_weights", "logit_scale", "self_logit_scale")


#: a head trained here: safetensors with this ``format`` in its metadata (``sd4match.train --variant ...-head``)
HEAD_FORMAT = "corrbench-head"


def _head_file(path: str) -> Path:
    """A head file, or a training folder (its ``best.safetensors``, else ``last.safetensors``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise MatcherError(f"{path}: a folder without best.safetensors or last.safetensors (a head training --out?)")
    if not p.is_file():
        raise MatcherError(f"{path}: no head checkpoint there; set head= to a released file ({RELEASES})")
    return p


def save_head(head: AggregationHead, path, **meta) -> None:
    """A trained head as safetensors in the authors' key layout (so :func:`load_head` and the authors'
    ``load_state_dict`` read it), with ``format``, the widths and ``meta`` (JSON values) as metadata."""
    import json

    from safetensors.torch import save_file

    from loaders.atomic import atomic_path

    info = {"format": HEAD_FORMAT, **{k: json.dumps(v, sort_keys=True, default=str) for k, v in
                                       {**head.describe(), **meta}.items()}}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    with atomic_path(Path(path), suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=info)


def head_metadata(path: str) -> dict:
    """The metadata of a head trained here (values decoded from JSON); {} for other files (released ones)."""
    import json

    p = _head_file(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise MatcherError(f"{p}: cannot read the head checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if meta.get("format") != HEAD_FORMAT:
        return {}
    out = {}
    for k, v in meta.items():
        if k == "format":
            continue
        try:
            out[k] = json.loads(v)
        except ValueError:
            raise MatcherError(f"{p}: metadata {k!r} is not JSON ({v[:60]!r})") from None
    return out


def trained_settings(path: str, matcher: str) -> dict:
    """The feature settings a head trained here carries (``features``: the matcher's preset and settings
    it was trained on), for ``head=`` to bring along; a head trained for another matcher is refused."""
    meta = head_metadata(path)
    if not meta:
        return {}
    if meta.get("matcher") not in (None, matcher):
        raise MatcherError(f"{path}: a head trained on {meta.get('matcher')}'s features; evaluate it with "
                           f"--matcher {meta.get('matcher')}")
    feats = meta.get("features") or {}
    return {k: v for k, v in feats.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}


def shape_of(state: dict[str, torch.Tensor], source: str) -> dict:
    """The head's widths read from a state dict's shapes (a one-line error for one that fits no head)."""
    bad = [k for k in state if k not in _SCALARS and not _STAGE.fullmatch(k)]
    if bad:
        raise MatcherError(f"{source}: key {bad[0]!r} is not a key of the aggregation head "
                           "(bottleneck_layers.I.0.convN..., mixing_weights, logit_scale, self_logit_scale)")
    stages = sorted({int(_STAGE.fullmatch(k).group(1)) for k in state if _STAGE.fullmatch(k)})
    if not stages or stages != list(range(len(stages))):
        raise MatcherError(f"{source}: the head's stages must be numbered 0..N-1, found {stages}")
    dims, proj, mid = [], set(), set()
    for i in stages:
        try:
            c1, c3 = state[f"bottleneck_layers.{i}.0.conv1.weight"], state[f"bottleneck_layers.{i}.0.conv3.weight"]
        except KeyError as exc:
            raise MatcherError(f"{source}: stage {i} lacks {exc.args[0]}") from None
        if c1.dim() != 4 or c3.dim() != 4:
            raise MatcherError(f"{source}: stage {i}'s convolutions must be 4-d weights")
        dims.append(int(c1.shape[1]))
        mid.add(int(c1.shape[0]))
        proj.add(int(c3.shape[0]))
    if len(proj) != 1 or len(mid) != 1:
        raise MatcherError(f"{source}: the stages disagree on the projection or bottleneck width ({sorted(proj)}, {sorted(mid)})")
    return {"feature_dims": dims, "projection_dim": proj.pop(), "bottleneck_channels": mid.pop()}


def read_state(path: str) -> dict[str, torch.Tensor]:
    """A head's tensors from a ``.safetensors`` or ``torch.save`` file, read safely (``weights_only``,
    on the CPU whatever device saved them); finite floating-point values only."""
    from ..convert import read_tensors

    return read_tensors(_head_file(path), "the head checkpoint")


def load_head(path: str, device="cpu", norm_groups: int = NORM_GROUPS) -> AggregationHead:
    """The head a file holds, its widths read from the file's shapes, every key used (strict)."""
    state = read_state(path)
    widths = shape_of(state, path)
    if any(w % norm_groups for w in (widths["projection_dim"], widths["bottleneck_channels"])):
        raise MatcherError(f"{path}: widths {widths['projection_dim']} / {widths['bottleneck_channels']} are not "
                           f"divisible by the {norm_groups} GroupNorm groups")
    head = AggregationHead(norm_groups=norm_groups, **widths)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc).splitlines()[0])
        raise MatcherError(f"{path}: the state dict does not fit the aggregation head of widths "
                           f"{widths['feature_dims']} -> {widths['projection_dim']} ({first[:200]})") from None
    return head.to(device).eval().requires_grad_(False)


def load_into(head: AggregationHead, state: dict[str, torch.Tensor]) -> list[str]:
    """The authors' rule for starting a head from a checkpoint of another size
    (``load_pretrained_weights``): the first four mixing weights are copied, a fifth (if any) is zero;
    every other key is copied where its name and shape match. Returns the keys copied."""
    own = head.state_dict()
    copied = []
    with torch.no_grad():
        for k, v in state.items():
            if k == "mixing_weights":
                n = min(4, len(v), len(own[k]))
                own[k][:n] = v[:n]
                if len(own[k]) > 4:
                    own[k][4] = 0.0
                copied.append(f"{k}[:{n}]")
            elif k in own and own[k].shape == v.shape:
                own[k].copy_(v)
                copied.append(k)
    head.load_state_dict(own)
    return copied


def require_head(matcher: str, setting: str, what: str) -> None:
    """A supervised matcher without ``head=``: one line naming where the released files are."""
    if not setting:
        raise MatcherError(f"matcher {matcher!r} needs head= ({what}): {RELEASES}; --preset tiny uses a seeded "
                           "random head")


def head_fingerprint(setting: str, seed: int) -> str:
    """What a matcher's features depend on for ``head=``: the file's content sha256, or the seed of
    ``random``; a file that cannot be read is a one-line error."""
    if setting == "random":
        return f"random:seed{seed}"
    from benchmarks.fingerprint import file_digest

    try:
        return file_digest(_head_file(setting), {})
    except OSError as exc:
        raise MatcherError(f"{setting}: cannot read the head checkpoint ({exc.strerror or exc})") from None


def head_info(setting: str, seed: int, head: AggregationHead | None) -> dict:
    """``run.json``'s record of a head: the file, its full sha256, and its widths once built."""
    info = {"file": setting}
    if setting != "random":
        info["sha256"] = head_fingerprint(setting, seed)
    if head is not None:
        info.update(head.describe())
    return info


def random_head(feature_dims, projection_dim: int = 128, seed: int = 0) -> AggregationHead:
    """A seeded random head (the ``tiny`` presets' ``head=random``: tests the pipeline, not the method)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AggregationHead(feature_dims, projection_dim).eval().requires_grad_(False)
