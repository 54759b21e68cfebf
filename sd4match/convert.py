"""Convert released SD4Match reference prompt files into this toolkit's checkpoint format.

    python -m sd4match.convert --variant {single,class,cpm} --input FILE --out FILE.safetensors

SD4Match's own files, as its savers write them:

- Single / Class (``caption.pt``): per key (``dataset`` for Single, category names for Class) a
  ``[1, 77, D]`` tensor laid out as BOS + position 0, the 75 learned rows, EOS + position 76. The
  75 learned rows are kept exactly as stored (they are the text transformer's input, positions
  included); BOS and EOS come from the text encoder at run time.
- CPM (``ckpt.pt``): the captioner's state dict without its text embeddings: ``global_embeds``
  ``[1, 25, D]``, ``positional_embedding`` ``[1, 50, D]``, ``alpha_cond`` ``[1, 50, D]``,
  ``linear_C.weight`` ``[D, 2 Dd]``, ``linear_C.bias``, ``linear_N.weight`` ``[P, P]``,
  ``linear_N.bias``. Other key names are matched by shape, with name hints (``pos``, ``alpha``) for
  the two 50 x D tensors; anything ambiguous is an error naming the keys.

Pickled files are read with ``torch.load(weights_only=True)`` only (tensors and plain containers;
nothing in the file can run code). Every tensor is converted to float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.matchers.base import MatcherError

from . import checkpoint as ckpt
from .prompts import N_TOKENS, VARIANTS, build_prompt


def read_tensors(path: Path, what: str = "prompt file") -> dict[str, torch.Tensor]:
    """Names -> finite float32 tensors from a ``.safetensors`` file or a ``torch.save`` file read with
    ``weights_only`` (a ``state_dict`` entry is unwrapped); anything else is a one-line MatcherError."""
    if not path.is_file():
        raise MatcherError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MatcherError(f"{path}: cannot read {what} ({type(exc).__name__}: {str(exc)[:120]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MatcherError(f"{path}: expected a non-empty mapping of names to tensors")
    out = {}
    for k, v in obj.items():
        if not v.is_floating_point():
            raise MatcherError(f"{path}: key {k!r} holds {v.dtype} values, expected floating point")
        v = v.float()
        if not torch.isfinite(v).all():
            raise MatcherError(f"{path}: key {k!r} holds NaN or infinite values")
        out[str(k)] = v
    return out


def _tokens(t: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1]) if t.dim() == 3 and t.shape[0] == 1 else t
    if t.dim() == 2 and t.shape[0] == N_TOKENS + 2:
        return t[1:-1]
    if t.dim() == 2 and t.shape[0] == N_TOKENS:
        return t
    raise MatcherError(f"{path}: key {key!r} has shape {tuple(t.shape)}, expected [1, 77, D] or [75, D]")


#: SD4Match's CPM state-dict names -> this toolkit's
CPM_NATIVE = {"global_embeds": "global_tokens", "linear_C.weight": "channel.weight", "linear_C.bias": "channel.bias",
              "linear_N.weight": "patch.weight", "linear_N.bias": "patch.bias", "positional_embedding": "pos",
              "alpha_cond": "alpha"}


def _cpm_state(data: dict[str, torch.Tensor], src: Path) -> dict[str, torch.Tensor]:
    # leading singleton axes (SD4Match keeps its prompt tensors as [1, n, D]) are dropped
    data = {k: (v.reshape(v.shape[1:]) if v.dim() == 3 and v.shape[0] == 1 else v) for k, v in data.items()}
    if set(CPM_NATIVE) <= set(data):
        return {ours: data[theirs] for theirs, ours in CPM_NATIVE.items()}
    two_d = {k: v for k, v in data.items() if v.dim() == 2}
    one_d = {k: v for k, v in data.items() if v.dim() == 1}
    glob = [k for k, v in two_d.items() if v.shape[0] == 25]
    fifty = [k for k, v in two_d.items() if v.shape[0] == 50]
    if len(glob) != 1 or len(fifty) != 2:
        raise MatcherError(f"{src}: expected one 25 x D and two 50 x D tensors for CPM, found {glob} and {fifty} "
                           f"(keys: {', '.join(list(data)[:10])})")
    width = two_d[glob[0]].shape[1]
    alpha = [k for k in fifty if "alpha" in k.lower()]
    pos = [k for k in fifty if "pos" in k.lower()]
    if len(alpha) != 1 or len(pos) != 1 or alpha == pos:
        raise MatcherError(f"{src}: cannot tell position embedding from alpha among {fifty} (need 'pos' and 'alpha' in the names)")
    chan = [k for k, v in two_d.items() if v.shape[0] == width and v.shape[1] != width]
    square = [k for k, v in two_d.items() if v.shape[0] == v.shape[1] and k not in glob + fifty]
    if len(chan) != 1 or len(square) != 1:
        raise MatcherError(f"{src}: expected one D x 2Dd and one P x P weight for CPM, found {chan} and {square}")
    n_patches = two_d[square[0]].shape[0]

    def bias_of(weight_key, size):
        twin = weight_key.replace("weight", "bias")
        if twin != weight_key and twin in one_d and one_d[twin].shape[0] == size:
            return [twin]
        return [k for k, v in one_d.items() if v.shape[0] == size]

    chan_b = bias_of(chan[0], width)
    patch_b = [k for k in bias_of(square[0], n_patches) if k not in chan_b]
    if len(chan_b) != 1 or len(patch_b) != 1:
        raise MatcherError(f"{src}: cannot identify the two CPM bias vectors among {list(one_d)}")
    return {"global_tokens": two_d[glob[0]], "channel.weight": two_d[chan[0]], "channel.bias": one_d[chan_b[0]],
            "patch.weight": two_d[square[0]], "patch.bias": one_d[patch_b[0]], "pos": two_d[pos[0]],
            "alpha": two_d[alpha[0]]}


def convert(variant: str, src: Path, out: Path) -> str:
    data = read_tensors(src)
    if variant == "single":
        keys = list(data)
        key = "dataset" if "dataset" in data else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise MatcherError(f"{src}: Single prompts need one tensor (key 'dataset'), found keys {keys[:5]}")
        tokens = _tokens(data[key], key, src)
        module = build_prompt("single", tokens.shape[1])
        module.tokens.data.copy_(tokens)
        cats = []
    elif variant == "class":
        cats = sorted(data)
        toks = [_tokens(data[c], c, src) for c in cats]
        widths = sorted({t.shape[1] for t in toks})
        if len(widths) != 1:
            raise MatcherError(f"{src}: class prompts of different widths {widths}; one file must hold one model's prompts")
        module = build_prompt("class", widths[0], cats)
        module.tokens.data.copy_(torch.stack(toks))
    elif variant == "cpm":
        sd = _cpm_state(data, src)
        g, cw, pw = sd["global_tokens"], sd["channel.weight"], sd["patch.weight"]
        if g.dim() != 2 or cw.dim() != 2 or pw.dim() != 2 or cw.shape[1] % 2:
            raise MatcherError(f"{src}: CPM tensors have unexpected shapes {[tuple(v.shape) for v in sd.values()]}")
        width, dino_dim, n_patches = g.shape[1], cw.shape[1] // 2, pw.shape[0]
        module = build_prompt("cpm", width, dino_dim=dino_dim, n_patches=n_patches)
        try:
            module.load_state_dict(sd)
        except RuntimeError as exc:
            raise MatcherError(f"{src}: CPM tensors do not fit together ({str(exc).splitlines()[-1].strip()[:160]})") from None
        cats = []
    else:
        raise MatcherError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    extra = {"dino_dim": module.dino_dim, "n_patches": module.n_patches} if variant == "cpm" else {}
    width = next(iter(module.parameters())).shape[-1] if variant != "cpm" else module.global_tokens.shape[1]
    ckpt.save(module, out, variant=variant, text_width=int(width), categories=cats,
              config={"converted_from": str(src)}, **extra)
    return f"wrote {out}: {variant} prompts, width {width}" + (f", {len(cats)} categories" if cats else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sd4match.convert", description=__doc__.splitlines()[0])
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    try:
        if args.out.is_dir():
            raise MatcherError(f"{args.out}: --out is a folder; give the prompt file to write (e.g. {args.out / 'prompts.safetensors'})")
        print(convert(args.variant, args.input, args.out))
    except MatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {getattr(exc, 'filename', None) or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
