"""SD4Match matchers (``single``, ``class``, ``cpm``) with the reference test settings.

Defaults: SD-2.1, t = 50, ensemble 8, 768 x 768, up_blocks[1], kernel soft-argmax (sigma 7
cells, temperature 0.04) on the 48 x 48 grid. ``--checkpoint`` is a training output folder or a
prompt ``.safetensors`` file (released reference prompts: convert them with
``python -m sd4match.convert``). CPM features depend on both images, so they are computed per
pair; Single/Class features are per image and cached like DIFT's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from benchmarks.console import say
from benchmarks.matchers.base import ConfigError, MatcherError

from .. import checkpoint as ckpt
from ..backbones.dino import (
    POSITION_RULES,
    default_dino_id,
    dims,
    load_dino,
    patch_tokens,
    preprocess,
)
from ..prompts import PROMPT_FORMAT, PromptEncoder, build_prompt
from .sd_base import SDConfig, SDMatcherBase
from .store import ImageStore

#: categories a class prompt may be asked for when no checkpoint fixes them (untrained runs)
KNOWN_CATEGORIES = sorted({
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "duck", "winebottle",
})
UNTRAINED_OK = ("tiny", "random-sd21")


@dataclass(frozen=True)
class SD4MatchConfig(SDConfig):
    """checkpoint: prompts to evaluate; dino_id: DINOv2 for the CPM; category_map: how dataset
    categories map to class-prompt names (PF-Willow evaluated with PF-Pascal prompts); dino_pos: the
    DINOv2 position-embedding rule (``hub``: the transformers release SD4Match precomputed its DINOv2
    features with, equal to DINOv2's torch.hub; ``transformers``: transformers >= 4.45)."""

    def __post_init__(self):
        super().__post_init__()
        if self.dino_pos not in POSITION_RULES:
            raise ValueError(f"dino_pos must be one of {', '.join(POSITION_RULES)}, got {self.dino_pos!r}")

    t: int = 50
    ensemble: int = 8
    checkpoint: str = ""
    dino_id: str = field(default_factory=default_dino_id)
    dino_pos: str = "hub"
    category_map: str = "winebottle=bottle,duck=bird"
    readout: str = "kernel-soft-argmax,nn,soft-argmax,window-soft-argmax"


TINY = {"model_id": "tiny", "dino_id": "tiny", "image_size": 32, "ensemble": 2, "kernel_sigma": 3.0, "batch_size": 16}


class SD4MatchMatcher(SDMatcherBase):
    variant = ""
    #: SD4Match evaluates under float16 autocast on GPUs (weights float32, autocast float16)
    gpu_dtype = "float16-autocast"
    Config = SD4MatchConfig
    presets = {"tiny": TINY, "fast": {"ensemble": 1}}

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config
        try:
            pairs = [kv.split("=", 1) for kv in cfg.category_map.split(",") if kv.strip()]
            self.category_map = {k.strip(): v.strip() for k, v in pairs}
        except ValueError:
            raise ConfigError(f"category_map must look like 'duck=bird,winebottle=bottle', got {cfg.category_map!r}") from None
        if not cfg.checkpoint and cfg.model_id not in UNTRAINED_OK:
            raise ConfigError(f"matcher {self.name!r} needs --checkpoint (a training folder or prompt file); "
                              f"untrained prompts are allowed only with the {' / '.join(UNTRAINED_OK)} models")
        self._prompt = None
        self._encoder = None
        self._ckpt_meta: dict = {}
        self._contexts: dict[str, torch.Tensor] = {}
        self._dino = None

    # ------------------------------------------------------------------ prompts
    def _setup_prompt(self):
        if self._prompt is not None:
            return
        sd = self.sd
        width = int(sd.c.text_encoder.config.hidden_size)
        n_patches = dino_dim = None
        if self.variant == "cpm":
            model, spec = self.dino
            n_patches, dino_dim = dims(model, spec)
        if self.config.checkpoint:
            module, meta = ckpt.load(self.config.checkpoint, variant=self.variant, text_width=width,
                                     dino_dim=dino_dim, n_patches=n_patches)
            self._ckpt_meta = meta
        else:
            torch.manual_seed(self.config.seed)
            module = build_prompt(self.variant, width, KNOWN_CATEGORIES, dino_dim=dino_dim or 768,
                                  n_patches=n_patches or 256, text_encoder=sd.c.text_encoder,
                                  generator=torch.Generator().manual_seed(self.config.seed))
            self._ckpt_meta = {"sha256": f"untrained-seed-{self.config.seed}", "prompt_format": PROMPT_FORMAT}
        self._prompt = module.to(self.device).eval().requires_grad_(False)
        legacy = self._ckpt_meta.get("prompt_format") == 1
        if legacy:
            import warnings

            warnings.warn(f"{self._ckpt_meta.get('file')}: prompt format 1 (written before corrbench adopted SD4Match's "
                          "prompt encoding); CLIP position embeddings are added to its rows, as when it was trained",
                          stacklevel=2)
        self._encoder = PromptEncoder(sd.c.text_encoder, sd.c.tokenizer, legacy_positions=legacy)

    @property
    def dino(self):
        if self._dino is None:

            say(f"loading DINOv2 from {self.config.dino_id} ...")
            model, spec = load_dino(self.config.dino_id, self.config.seed, self.config.dino_pos)
            self._dino = (model.to(self.device), spec)
        return self._dino

    @classmethod
    def settings_from_checkpoint(cls, path: str) -> dict[str, str]:
        """The model ids a training checkpoint was made with (``--checkpoint`` brings them along)."""
        return ckpt.trained_with(path)

    def preflight(self, dataset: str, categories: list[str]) -> None:
        """Refuse, before any model loads, what the checkpoint's metadata already rules out: another
        variant, a category without a class prompt, prompts of another width than the model's."""
        if not self.config.checkpoint:
            return
        import json

        file = ckpt.resolve(self.config.checkpoint)
        _, meta = ckpt.read(file)
        got = meta.get("variant")
        if got != self.variant:
            raise MatcherError(f"{file}: holds {got!r} prompts, but the matcher is {self.variant!r}; use --matcher {got}")
        if self.variant == "class":
            cats = json.loads(meta.get("categories", "[]"))
            for c in categories:
                if c not in cats and self.category_map.get(c) not in cats:
                    raise MatcherError(f"{file}: no class prompt for category {c!r} of {dataset} (prompts: "
                                       f"{', '.join(cats)}); map it with --set category_map={c}=CLASS")
        width = ckpt.text_width_of(self.config.model_id)
        have = int(meta.get("text_width", 0) or 0)
        if width is not None and have and width != have:
            raise MatcherError(f"{file}: prompts have width {have}, the text encoder of {self.config.model_id} has {width} "
                               "(trained for another model size)")

    def prompt_category(self, category: str) -> str:
        if self.variant == "class" and self._prompt is not None and category not in self._prompt.index:
            mapped = self.category_map.get(category)
            if mapped is None or mapped not in self._prompt.index:
                raise MatcherError(
                    f"{self._ckpt_meta.get('file', 'class prompts')}: no class prompt for category {category!r} "
                    f"(prompts: {', '.join(self._prompt.categories)}); map it with --set category_map={category}=CLASS"
                )
            return mapped
        return category

    def cache_tag(self, info) -> str:
        self._setup_prompt()
        cat = self.prompt_category(info.category) if self.variant == "class" else ""
        return f"{self.variant}|{self._ckpt_meta.get('sha256')}|{cat}"

    @torch.no_grad()
    def _context(self, categories: list[str]) -> torch.Tensor:
        self._setup_prompt()
        for c in set(categories):
            if c not in self._contexts:
                tokens = self._prompt([self.prompt_category(c)]).to(self.dtype)
                with self.sd.amp():
                    self._contexts[c] = self._encoder(tokens)[0]
        return torch.stack([self._contexts[c] for c in categories])

    # ------------------------------------------------------------------ features
    def extract(self, images, infos):
        ctx = self._context([i.category for i in infos])
        keys = [hashlib.sha256(f"{i.key}|{self.cache_tag(i)}".encode()).hexdigest() for i in infos]
        return self.sd_features(images, infos, ctx, keys)

    def describe(self) -> dict:
        return {**super().describe(), "variant": self.variant, "checkpoint": self.config.checkpoint,
                "checkpoint_sha256": self._ckpt_meta.get("sha256"), "prompt_format": self._ckpt_meta.get("prompt_format")}


class SingleMatcher(SD4MatchMatcher):
    name = "single"
    description = "SD4Match-Single: one learned 75-token prompt; SD-2.1 t=50, ensemble 8, kernel soft-argmax"
    variant = "single"


class ClassMatcher(SD4MatchMatcher):
    name = "class"
    description = "SD4Match-Class: one learned prompt per category; SD-2.1 t=50, ensemble 8, kernel soft-argmax"
    variant = "class"


class CPMMatcher(SD4MatchMatcher):
    name = "cpm"
    description = ("SD4Match-CPM: prompts conditioned on DINOv2 features of both images (per pair); t=50, ensemble 8 "
                   "(on a GPU add --set compile=true)")
    variant = "cpm"
    per_pair_features = True

    def __init__(self, config=None):
        super().__init__(config)
        cfg = self.config
        self._tokens = ImageStore(cfg.cache_dir, "dino", [self.fingerprints()["dino"], cfg.device.split(":")[0], cfg.dino_pos],
                                  self.device, one_at_a_time=cfg.batch_invariant)

    def fingerprints(self) -> dict[str, str]:
        out = super().fingerprints()
        if "dino" not in out:
            from benchmarks.fingerprint import model_fingerprint

            out["dino"] = model_fingerprint(self.config.dino_id, self.config.seed)
        return out

    def reset_caches(self) -> None:
        super().reset_caches()
        self._tokens.clear()

    def dino_tokens(self, infos) -> torch.Tensor:
        """DINOv2 patch tokens per image, computed once and cached (memory and disk)."""
        from PIL import Image

        model, spec = self.dino

        def compute(positions):
            pix = []
            for i in positions:
                with Image.open(infos[i].path) as im:
                    pix.append(preprocess(im, spec))
            return list(patch_tokens(model, torch.stack(pix)))

        return torch.stack(self._tokens.get(infos, compute))

    @torch.no_grad()
    def pair_context(self, src_infos, trg_infos) -> torch.Tensor:
        self._setup_prompt()
        src, trg = self.dino_tokens(src_infos), self.dino_tokens(trg_infos)  # float32, as SD4Match precomputed them
        with self.sd.amp():
            tokens = self._prompt([i.category for i in src_infos], src_dino=src, trg_dino=trg)
            return self._encoder(tokens.to(self.dtype))

    def pair_features(self, pairs):
        """Features per pair: the same CPM prompt conditions both images of a pair."""
        self._setup_prompt()
        images = self.load_images(pairs)
        items, owners = [], []
        for p in pairs:
            (si, s_info), (ti, t_info) = images[p.row["src_image"]], images[p.row["trg_image"]]
            tag = f"cpm|{self._ckpt_meta.get('sha256')}|{s_info.key[:16]}-{t_info.key[:16]}"
            items += [(si, s_info, tag + "|src"), (ti, t_info, tag + "|trg")]
            owners += [(s_info, t_info), (s_info, t_info)]

        def compute(batch, infos, positions):
            # one prompt (CPM + text encoder) per pair, shared by its two images
            pair_ids = [i // 2 for i in positions]
            unique = list(dict.fromkeys(pair_ids))
            ctx = self.pair_context([owners[2 * k][0] for k in unique], [owners[2 * k][1] for k in unique])
            if len(unique) != len(positions):
                where = {k: j for j, k in enumerate(unique)}
                ctx = torch.stack([ctx[where[k]] for k in pair_ids])  # no index tensor to upload
            keys = [hashlib.sha256(f"{infos[j].key}|{items[i][2]}".encode()).hexdigest() for j, i in enumerate(positions)]
            return self.sd_features(batch, infos, ctx, keys)

        feats = self.cached_features(items, compute)
        return [(feats[2 * k], feats[2 * k + 1]) for k in range(len(pairs))]
