"""Prompt checkpoints: safetensors files holding a prompt module's parameters plus metadata.

Metadata (all strings): ``format`` = ``corrbench-sd4match``, ``prompt_format`` (the meaning of the
stored rows, :data:`~sd4match.prompts.PROMPT_FORMAT`; absent = 1, files written before SD4Match's
prompt encoding was adopted, which are loaded with their old meaning), ``variant``, ``text_width``,
``categories`` (JSON list, class prompts), ``dino_dim`` and ``n_patches`` (CPM), ``step``, and the
resolved training ``config`` (JSON). Loading checks the variant and the sizes against what the
caller expects and names the file in every error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from benchmarks.matchers.base import MatcherError

from .prompts import PROMPT_FORMAT, build_prompt

FORMAT = "corrbench-sd4match"
BEST, LAST = "best.safetensors", "last.safetensors"


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a training folder (its ``best.safetensors``, else ``last.safetensors``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise MatcherError(f"{path}: no {BEST} or {LAST} in this folder (is it a training --out folder?)")
    if not path.is_file():
        raise MatcherError(f"{path}: checkpoint not found")
    return path


def save(module: torch.nn.Module, path: str | Path, *, variant: str, text_width: int, categories=(),
         dino_dim: int = 0, n_patches: int = 0, step: int = 0, config: dict | None = None) -> None:
    from safetensors.torch import save_file

    from loaders.atomic import atomic_path

    meta = {
        "format": FORMAT, "prompt_format": str(PROMPT_FORMAT), "variant": variant, "text_width": str(text_width),
        "categories": json.dumps(list(categories)), "dino_dim": str(dino_dim), "n_patches": str(n_patches),
        "step": str(step), "config": json.dumps(config or {}, sort_keys=True, default=str),
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise MatcherError(f"{path}: not a readable safetensors checkpoint ({type(exc).__name__}: {str(exc)[:120]})") from None
    if meta.get("format") != FORMAT:
        raise MatcherError(f"{path}: not an SD4Match prompt checkpoint (metadata format {meta.get('format')!r}, expected {FORMAT!r}); "
                           "released reference prompts must be converted first: python -m sd4match.convert")
    return tensors, meta


def load(path: str | Path, *, variant: str, text_width: int, dino_dim: int | None = None,
         n_patches: int | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the prompt module of ``path``, checking it is a ``variant`` prompt for this SD size."""
    file = resolve(path)
    tensors, meta = read(file)
    got = meta.get("variant")
    if got != variant:
        raise MatcherError(f"{file}: holds {got!r} prompts, but the matcher is {variant!r}; use --matcher {got}")
    width = int(meta.get("text_width", 0))
    if width != text_width:
        raise MatcherError(f"{file}: prompts have width {width}, this Stable Diffusion's text encoder has {text_width} "
                           "(trained for another model size)")
    categories = json.loads(meta.get("categories", "[]"))
    dd, npch = int(meta.get("dino_dim", 0)), int(meta.get("n_patches", 0))
    if variant == "cpm" and ((dino_dim is not None and dd != dino_dim) or (n_patches is not None and npch != n_patches)):
        raise MatcherError(f"{file}: CPM was trained on DINOv2 tokens {npch} x {dd}, this DINOv2 gives {n_patches} x {dino_dim}")
    module = build_prompt(variant, width, categories, dino_dim=dd or 768, n_patches=npch or 256)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise MatcherError(f"{file}: tensors do not fit a {variant!r} prompt ({str(exc).splitlines()[0][:160]})") from None
    try:
        fmt = int(meta.get("prompt_format", "1"))
    except ValueError:
        fmt = -1
    if fmt not in (1, PROMPT_FORMAT):
        raise MatcherError(f"{file}: prompt_format {meta.get('prompt_format')!r} is not one this toolkit knows "
                           f"(1 or {PROMPT_FORMAT}); upgrade corrbench")
    meta = {**meta, "file": str(file), "prompt_format": fmt, "sha256": content_hash(tensors, fmt)}
    return module, meta


#: training settings that decide the features a prompt was fitted to, carried by ``--checkpoint``
#: (t and ensemble are not: SD4Match trains at t = 261, ensemble 1 and tests at t = 50, ensemble 8)
CARRIED = ("model_id", "dino_id", "dino_pos", "image_size", "up_block")


def trained_with(path: str | Path) -> dict:
    """The feature settings a checkpoint's training used (:data:`CARRIED`, and ``preset`` ``tiny`` when
    it was trained on the tiny random model), from its metadata; {} for files without a training
    config (converted reference prompts)."""
    _, meta = read(path)
    try:
        config = json.loads(meta.get("config") or "{}")
    except json.JSONDecodeError:
        return {}
    if not isinstance(config, dict):
        return {}
    out: dict = {}
    for k in CARRIED:
        v = config.get(k)
        if isinstance(v, str) and v:
            out[k] = v
        elif isinstance(v, int) and not isinstance(v, bool):
            out[k] = v
    if out.get("model_id") == "tiny":
        out["preset"] = "tiny"
    return out


def text_width_of(model_id: str) -> int | None:
    """The text-encoder width of ``model_id`` read from its config alone (no weights loaded): the
    in-code presets, a local folder, or a hub snapshot already in the local cache; None if unknown."""
    if model_id == "tiny":
        from .backbones.tiny_sd import TINY_TEXT_DIM

        return int(TINY_TEXT_DIM)
    if model_id == "random-sd21":
        return 1024
    folder = Path(model_id).expanduser()
    candidates = [folder / "text_encoder" / "config.json"]
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, "text_encoder/config.json")
            candidates = [Path(cached)] if isinstance(cached, str) else []
        except Exception:
            candidates = []
    for c in candidates:
        try:
            width = json.loads(c.read_text()).get("hidden_size")
            return int(width) if isinstance(width, int) else None
        except (OSError, ValueError, AttributeError):
            return None
    return None


def content_hash(tensors: dict[str, torch.Tensor], prompt_format: int = PROMPT_FORMAT) -> str:
    """Hash of the tensors' names, dtypes, shapes and values (and the prompt format), not of the file's
    bytes: safetensors may order its metadata differently each time the same prompt is saved, and
    noise seeds and cache keys must not change with that."""
    from benchmarks.cachefile import digest

    h = hashlib.sha256(f"prompt_format={prompt_format}".encode())
    for name in sorted(tensors):
        h.update(f"|{name}|{digest(tensors[name])}".encode())
    return h.hexdigest()[:16]
