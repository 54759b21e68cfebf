"""ODISE's implicit captioner, as SD+DINO and GeoAware-SC run it (``captioner=odise``).

Facts (``baselines.md``; ODISE's ``LdmImplicitCaptionerExtractor`` as those two pipelines configure
it): every SD window (512 x 512, values in [0, 1]) is resized to the CLIP tower's input size with
bicubic interpolation *without* antialiasing (the tensor resize of the torchvision release those
pipelines pin), centre-cropped, normalised with OpenAI's CLIP mean/std and encoded by CLIP
ViT-L/14-336 (OpenAI weights, QuickGELU); the pooled class token after ``ln_post`` and the
projection (768-d, not L2-normalised) is the window's embedding ``e``. Then

- UNet context = empty-prompt embedding + tanh(alpha_cond) * (W_c e + b_c + P_c)   [77 x 768]
  (with a text prompt the context is the prompt's embedding and this term is not added);
- time embedding (after the time MLP) += tanh(alpha_t) * (W_t e + b_t + P_t)       [1280]

with ``clip_project`` (W_c, b_c, P_c [1, 77, 768]), ``alpha_cond`` [1, 77, 768],
``time_embed_project`` (W_t, b_t, P_t [1, 1, 1280]) and ``alpha_cond_time_embed`` [1280]: the 8
tensors of ODISE's released checkpoint under ``backbone.feature_extractor.`` (key names from the
module names; the released file was not available to check them). The CLIP tower is loaded with
transformers (``CLIPVisionModelWithProjection``, whose ``image_embeds`` are that embedding).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.matchers.base import MatcherError

CAPTIONERS = ("none", "odise")
CLIP_HUB_ID = "openai/clip-vit-large-patch14-336"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "backbone.feature_extractor."
KEYS = ("clip_project.linear.weight", "clip_project.linear.bias", "clip_project.positional_embedding", "alpha_cond",
        "time_embed_project.linear.weight", "time_embed_project.linear.bias",
        "time_embed_project.positional_embedding", "alpha_cond_time_embed")
HOW = ("captioner=odise needs ODISE's released checkpoint (e.g. odise_label_coco_50e-b67d2efc.pth from the ODISE "
       "release) as --set captioner_ckpt=PATH, and CLIP ViT-L/14-336 (--set clip_id=PATH or hub id, default "
       f"{CLIP_HUB_ID})")


def read_captioner(path: str) -> dict[str, torch.Tensor]:
    """The 8 captioner tensors from an ODISE checkpoint (a detectron2 ``.pth`` with a ``model``
    entry, a flat state dict, or ``.safetensors``), read safely (``weights_only``); keys with or
    without the ``backbone.feature_extractor.`` prefix. Anything else is a one-line MatcherError."""
    if not path:
        raise MatcherError(HOW)
    p = Path(path).expanduser()
    if not p.is_file():
        raise MatcherError(f"{path}: no ODISE checkpoint there; {HOW}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MatcherError(f"{path}: cannot read the ODISE checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise MatcherError(f"{path}: expected a state dict (a mapping of names to tensors)")
    out = {}
    for k in KEYS:
        v = obj.get(PREFIX + k, obj.get(k))
        if not isinstance(v, torch.Tensor):
            raise MatcherError(f"{path}: no tensor {PREFIX + k!r} (the ODISE captioner's weights); {HOW}")
        if not v.is_floating_point() or not torch.isfinite(v.float()).all():
            raise MatcherError(f"{path}: {PREFIX + k!r} must hold finite floating-point values")
        out[k] = v.float()
    return out


def load_clip(clip_id: str):
    """``CLIPVisionModelWithProjection`` from a local folder or hub id (one-line errors)."""
    from transformers import CLIPVisionModelWithProjection

    from .sd_models import pretrained

    return pretrained(CLIPVisionModelWithProjection, clip_id, "CLIP", HOW)


class Captioner(torch.nn.Module):
    """The captioner's projections and gates around a CLIP vision tower (see the module docstring)."""

    def __init__(self, tensors: dict[str, torch.Tensor], clip, source: str = "captioner"):
        super().__init__()
        self.clip = clip
        embed = int(clip.config.projection_dim)
        wc, wt = tensors["clip_project.linear.weight"], tensors["time_embed_project.linear.weight"]
        width, tdim = wc.shape[0], wt.shape[0]
        want = {"clip_project.linear.weight": (width, embed), "clip_project.linear.bias": (width,),
                "clip_project.positional_embedding": (1, 77, width), "alpha_cond": (1, 77, width),
                "time_embed_project.linear.weight": (tdim, embed), "time_embed_project.linear.bias": (tdim,),
                "time_embed_project.positional_embedding": (1, 1, tdim), "alpha_cond_time_embed": (tdim,)}
        for k, shape in want.items():
            if tuple(tensors[k].shape) != shape:
                raise MatcherError(f"{source}: {PREFIX + k} has shape {tuple(tensors[k].shape)}, expected {shape} "
                                   f"(CLIP embedding {embed}, text width {width}, time embedding {tdim})")
        for k, v in tensors.items():
            self.register_buffer(k.replace(".", "_"), v.clone())
        self.width, self.time_dim = width, tdim
        size = clip.config.image_size
        self.size = int(size if isinstance(size, int) else size[0])
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def check_fits(self, text_width: int, time_width: int, source: str) -> None:
        if (text_width, time_width) != (self.width, self.time_dim):
            raise MatcherError(f"{source}: the captioner gives contexts {self.width} wide and time additions "
                               f"{self.time_dim} wide; this UNet needs {text_width} and {time_width}")

    def clip_input(self, windows: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` windows in [0, 1] -> CLIP's normalised input: the short side resized to
        the tower's size (bicubic, no antialias, no clamp), centre crop, OpenAI mean/std."""
        h, w = windows.shape[-2:]
        S = self.size
        oh, ow = (S, max(S, int(S * w / h))) if h <= w else (max(S, int(S * h / w)), S)
        x = F.interpolate(windows.float(), size=(oh, ow), mode="bicubic", align_corners=False, antialias=False)
        top, left = (oh - S) // 2, (ow - S) // 2
        x = x[:, :, top:top + S, left:left + S]
        return (x - self.mean) / self.std

    def embed(self, windows: torch.Tensor) -> torch.Tensor:
        p = next(self.clip.parameters())
        return self.clip(pixel_values=self.clip_input(windows).to(p.device, p.dtype)).image_embeds.float()

    def prefix_embed(self, e: torch.Tensor) -> torch.Tensor:
        """``clip_project(image_embed)``: ``(N, 77, width)``, what the gate ``tanh(alpha_cond)`` scales."""
        return F.linear(e, self.clip_project_linear_weight, self.clip_project_linear_bias)[:, None] \
            + self.clip_project_positional_embedding

    def forward(self, windows: torch.Tensor, empty_context: torch.Tensor, text_context: torch.Tensor | None = None):
        """-> (contexts ``(N, 77, width)``, time-embedding additions ``(N, time_dim)``) of the windows."""
        e = self.embed(windows)
        prefix = self.prefix_embed(e)
        if text_context is None:
            ctx = empty_context.float()[None] + torch.tanh(self.alpha_cond) * prefix
        else:
            ctx = text_context.float()[None].expand(len(e), -1, -1)
        cond = F.linear(e, self.time_embed_project_linear_weight, self.time_embed_project_linear_bias)[:, None] \
            + self.time_embed_project_positional_embedding
        cond = torch.tanh(self.alpha_cond_time_embed) * cond
        return ctx, cond[:, 0]


def load_captioner(ckpt: str, clip_id: str) -> Captioner:
    tensors = read_captioner(ckpt)
    return Captioner(tensors, load_clip(clip_id), source=ckpt)
