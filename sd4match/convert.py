"""Convert released SD4Match reference prompt files into this toolkit's checkpoint format.

    python -m sd4match.convert --variant {single,class,cpm} --input FILE --out FILE.safetensors

The released files (a zip on the authors' site) hold, per key, a ``[1, 77, 1024]`` token
embedding tensor for Single/Class (key ``dataset`` for Single, category names for Class), of which
the 75 tokens between BOS and EOS are the learned prompt; and a state dict for CPM. Their exact key
names are unconfirmed, so CPM tensors are matched by shape, with name hints (``pos``, ``alpha``)
for the two 50 x 1024 tensors; anything ambiguous is an error naming the key.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.matchers.base import MatcherError

from . import checkpoint as ckpt
from .prompts import N_TOKENS, VARIANTS, build_prompt


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MatcherError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MatcherError(f"{path}: cannot read prompt file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MatcherError(f"{path}: expected a mapping of names to tensors")
    return obj


def _tokens(t: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1]) if t.dim() == 3 and t.shape[0] == 1 else t
    if t.shape[0] == N_TOKENS + 2:
        return t[1:-1]
    if t.shape[0] == N_TOKENS:
        return t
    raise MatcherError(f"{path}: key {key!r} has shape {tuple(t.shape)}, expected [1, 77, D] or [75, D]")


def convert(variant: str, src: Path, out: Path) -> str:
    data = _load(src)
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
        module = build_prompt("class", toks[0].shape[1], cats)
        module.tokens.data.copy_(torch.stack(toks))
    elif variant == "cpm":
        two_d = {k: v for k, v in data.items() if v.dim() == 2}
        one_d = {k: v for k, v in data.items() if v.dim() == 1}
        glob = [k for k, v in two_d.items() if v.shape[0] == 25]
        fifty = [k for k, v in two_d.items() if v.shape[0] == 50]
        if len(glob) != 1 or len(fifty) != 2:
            raise MatcherError(f"{src}: expected one 25 x D and two 50 x D tensors for CPM, found {glob} and {fifty}")
        width = two_d[glob[0]].shape[1]
        alpha = [k for k in fifty if "alpha" in k.lower()]
        pos = [k for k in fifty if "pos" in k.lower()]
        if len(alpha) != 1 or len(pos) != 1 or alpha == pos:
            raise MatcherError(f"{src}: cannot tell position embedding from alpha among {fifty} (need 'pos' and 'alpha' in the names)")
        chan = [k for k, v in two_d.items() if v.shape[0] == width and v.shape[1] != width]
        square = [k for k, v in two_d.items() if v.shape[0] == v.shape[1] and k not in glob + fifty]
        if len(chan) != 1 or len(square) != 1:
            raise MatcherError(f"{src}: expected one D x 2Dd and one P x P weight for CPM, found {chan} and {square}")
        dino_dim, n_patches = two_d[chan[0]].shape[1] // 2, two_d[square[0]].shape[0]
        def bias_of(weight_key, size):
            twin = weight_key.replace("weight", "bias")
            if twin != weight_key and twin in one_d and one_d[twin].shape[0] == size:
                return [twin]
            return [k for k, v in one_d.items() if v.shape[0] == size]

        chan_b = bias_of(chan[0], width)
        patch_b = [k for k in bias_of(square[0], n_patches) if k not in chan_b]
        if len(chan_b) != 1 or len(patch_b) != 1:
            raise MatcherError(f"{src}: cannot identify the two CPM bias vectors among {list(one_d)}")
        module = build_prompt("cpm", width, dino_dim=dino_dim, n_patches=n_patches)
        sd = {"global_tokens": two_d[glob[0]], "channel.weight": two_d[chan[0]], "channel.bias": one_d[chan_b[0]],
              "patch.weight": two_d[square[0]], "patch.bias": one_d[patch_b[0]], "pos": two_d[pos[0]], "alpha": two_d[alpha[0]]}
        module.load_state_dict(sd)
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
        print(convert(args.variant, args.input, args.out))
    except MatcherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
