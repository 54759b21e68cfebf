"""Prompt training for SD4Match (Single, Class, CPM).

    python -m sd4match.train --variant {single,class,cpm} --dataset D --data-root DIR --out DIR
        [--preset tiny] [--max-steps N] [--epochs E] [--batch-size B] [--resume] [--dry-run]

Reference recipe as defaults: Gaussian-smoothed cross-entropy (temperature 0.04, 7 x 7 window,
sigma 1.5 cells, at most 20 keypoints per pair); Adam, lr 0.01 (CPM linear layers 0.001), no
weight decay; t = 261, ensemble 1; batch 3 per process; 5 epochs on SPair-71k, 90 on PF-Pascal
(with the list's horizontal flips); validation PCK@0.1 (per image, SD4Match frame) at t = 261,
ensemble 1 after every epoch selects ``best.safetensors``.

Everything random is a function of (seed, step, image): the pair order of epoch e is a seeded
permutation, the latent sample and noise of an image at step s are seeded by (seed, s, image).
A run resumed with ``--resume`` from its last saved step therefore ends with the same parameters
as an uninterrupted run. Multi-GPU: ``torchrun --nproc_per_node N -m sd4match.train ...`` splits
each global batch across ranks and averages gradients (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np

from .config import DEFAULT_EPOCHS, PRESETS, TrainConfig, TrainError  # noqa: F401 - re-exported
from .steps import CheckpointSteps


# ---------------------------------------------------------------------------------------- data
def load_pair_images(row: dict, root: Path, flip: bool, size: int):
    """(src, trg) as ((3, S, S) tensors in [0, 1], PIL images, keys) and flipped keypoints."""
    import torch
    from PIL import Image, ImageOps

    from benchmarks.dense import pixel_key

    out = []
    for side in ("src", "trg"):
        path = root / row[f"{side}_image"]
        try:
            data = path.read_bytes()
            img = Image.open(io.BytesIO(data)).convert("RGB")
        except (OSError, FileNotFoundError) as exc:
            raise TrainError(f"{path}: cannot read image ({exc})") from None
        key = pixel_key(img)
        kps = np.asarray(row[f"{side}_kps"], dtype=np.float64).reshape(-1, 2)
        if flip:
            img = ImageOps.mirror(img)
            kps = kps.copy()
            kps[:, 0] = img.width - 1 - kps[:, 0]
            key += "|flip"
        arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        out.append((torch.from_numpy(arr).permute(2, 0, 1), img, key, kps))
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


# ---------------------------------------------------------------------------------------- trainer
class Trainer(CheckpointSteps):
    def __init__(self, cfg: TrainConfig, out: Path, rank: int = 0, world: int = 1):
        import torch

        import loaders
        from benchmarks.dense import resolve_dtype

        from ..backbones.sd_models import load_components
        from ..prompts import PromptEncoder, build_prompt

        self._place(cfg, out, rank, world)
        self.dtype = resolve_dtype(cfg.dtype)
        self.root = Path(cfg.data_root)
        self.rows = loaders.load(cfg.dataset, self.root, cfg.split).to_pylist()
        self.rows = [r for r in self.rows if len(r["src_kps"]) > 0]
        if not self.rows:
            raise TrainError(f"{cfg.dataset} {cfg.split}: no pairs with keypoints to train on")
        self.val_rows = None
        if cfg.val_split and cfg.val_split in loaders.api.SPLITS_OF[cfg.dataset] and cfg.val_split != cfg.split:
            self.val_rows = loaders.load(cfg.dataset, self.root, cfg.val_split)
            if cfg.val_limit:
                self.val_rows = self.val_rows.slice(0, cfg.val_limit)
        self.categories = sorted({r["category"] for r in self.rows})
        from ..backbones.sd import SDFeaturizer

        comps = load_components(cfg.model_id, seed=cfg.seed)
        self.sd = SDFeaturizer(comps, cfg.up_block, self.device, self.dtype)
        self.width = int(comps.text_encoder.config.hidden_size)
        self.encoder = PromptEncoder(comps.text_encoder, comps.tokenizer)
        self.dino = None
        dino_dim, n_patches = 768, 256
        if cfg.variant == "cpm":
            from ..backbones.dino import dims, load_dino

            model, spec = load_dino(cfg.dino_id, cfg.seed, cfg.dino_pos)
            self.dino = (model.to(self.device), spec)
            n_patches, dino_dim = dims(model, spec)
        self.dino_dim, self.n_patches = dino_dim, n_patches
        torch.manual_seed(cfg.seed)  # CPM's initial values (SD4Match's captioner draws them from torch's generator)
        self.prompt = build_prompt(cfg.variant, self.width, self.categories, dino_dim=dino_dim, n_patches=n_patches,
                                   text_encoder=comps.text_encoder,
                                   generator=torch.Generator().manual_seed(cfg.seed)).to(self.device)
        linear = {id(p) for p in (self.prompt.linear_parameters() if cfg.variant == "cpm" else [])}
        groups = [{"params": [p for p in self.prompt.parameters() if id(p) not in linear], "lr": cfg.lr}]
        if linear:
            groups.append({"params": [p for p in self.prompt.parameters() if id(p) in linear], "lr": cfg.lr_linear})
        self.opt = torch.optim.Adam(groups, weight_decay=0.0)
        self.posteriors: dict[str, tuple] = {}
        self.tokens: dict[str, object] = {}
        self.step = 0
        self.log: list[dict] = []
        self.best = -1.0
        self.steps_per_epoch = math.ceil(len(self.rows) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.resolved_epochs()
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    # ------------------------------------------------------------------ checkpoint steps
    def write_weights(self, path: Path) -> None:
        from .. import checkpoint as ckpt

        cfg = self.cfg
        ckpt.save(self.prompt, path, variant=cfg.variant, text_width=self.width,
                  categories=self.categories if cfg.variant == "class" else [],
                  dino_dim=self.dino_dim if cfg.variant == "cpm" else 0,
                  n_patches=self.n_patches if cfg.variant == "cpm" else 0, step=self.step,
                  config=dataclasses.asdict(cfg))

    def restore_weights(self, step_dir: Path) -> int | None:
        from .. import checkpoint as ckpt
        from ..prompts import PROMPT_FORMAT

        module, meta = ckpt.load(step_dir / ckpt.LAST, variant=self.cfg.variant, text_width=self.width,
                                 dino_dim=self.dino_dim if self.cfg.variant == "cpm" else None,
                                 n_patches=self.n_patches if self.cfg.variant == "cpm" else None)
        if meta["prompt_format"] != PROMPT_FORMAT:
            raise TrainError(f"{step_dir / ckpt.LAST}: prompt format {meta['prompt_format']} (trained before corrbench "
                             f"adopted SD4Match's prompt encoding) cannot be resumed; evaluate it as it is, or start a new run")
        self.prompt.load_state_dict(module.state_dict())
        return int(meta["step"]) if meta.get("step") not in (None, "") else None

    # ------------------------------------------------------------------ pieces
    def _posterior(self, imgs, keys):
        torch = self.torch
        for i, k in enumerate(keys):  # one image at a time: the result must not depend on batch composition
            if k not in self.posteriors:
                mean, std = self.sd.posterior((imgs[i][None] * 2 - 1).to(self.device, self.dtype))
                self.posteriors[k] = (mean[0], std[0])
        return (torch.stack([self.posteriors[k][0] for k in keys]), torch.stack([self.posteriors[k][1] for k in keys]))

    def _dino_tokens(self, pils, keys):
        from ..backbones.dino import patch_tokens, preprocess

        torch = self.torch
        model, spec = self.dino
        for i, k in enumerate(keys):  # one image at a time, as for the posteriors
            if k not in self.tokens:
                self.tokens[k] = patch_tokens(model, preprocess(pils[i], spec)[None])[0]
        return torch.stack([self.tokens[k] for k in keys])

    def batch_rows(self, step: int) -> list[dict]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.rows), self.cfg.seed, epoch)
        idx = order[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
        rows = [self.rows[i] for i in idx]
        return rows[self.rank::self.world]

    def loss_for(self, rows: list[dict], step: int):
        """The training loss of ``rows`` at ``step`` (differentiable w.r.t. the prompt)."""
        from .loss import frame_to_grid, gaussian_ce_loss

        torch, cfg = self.torch, self.cfg
        S = cfg.image_size
        src_i, trg_i, src_k, trg_k, src_p, trg_p, kp_s, kp_t, cats, sizes = [], [], [], [], [], [], [], [], [], []
        for r in rows:
            flip = bool(cfg.flip and r.get("flip"))
            (si, sp, sk, skps), (ti, tp, tk, tkps) = load_pair_images(r, self.root, flip, S)
            src_i.append(si)
            trg_i.append(ti)
            src_k.append(sk)
            trg_k.append(tk)
            src_p.append(sp)
            trg_p.append(tp)
            kp_s.append(skps[: cfg.max_kps])
            kp_t.append(tkps[: cfg.max_kps])
            cats.append(r["category"])
            sizes.append(((sp.width, sp.height), (tp.width, tp.height)))
        B = len(rows)
        if cfg.variant == "cpm":
            tokens = self.prompt(cats, src_dino=self._dino_tokens(src_p, src_k), trg_dino=self._dino_tokens(trg_p, trg_k))
        else:
            tokens = self.prompt(cats)
        ctx = self.encoder(tokens.to(self.dtype))
        imgs, keys = src_i + trg_i, src_k + trg_k
        mean, std = self._posterior(imgs, keys)
        feats = self.sd.features(mean, std, torch.cat([ctx, ctx]), keys=[f"{k}|step{step}" for k in keys], t=cfg.t,
                                 ensemble=cfg.ensemble, seed=cfg.seed)
        fs, ft = feats[:B], feats[B:]
        hw = tuple(ft.shape[2:])
        K = max(len(k) for k in kp_s)
        sx = torch.zeros(B, K, 2)
        tx = torch.zeros(B, K, 2)
        valid = torch.zeros(B, K, dtype=torch.bool)
        for b in range(B):
            n = len(kp_s[b])
            sx[b, :n] = frame_to_grid(torch.as_tensor(kp_s[b], dtype=torch.float32), sizes[b][0], S, hw)
            tx[b, :n] = frame_to_grid(torch.as_tensor(kp_t[b], dtype=torch.float32), sizes[b][1], S, hw)
            valid[b, :n] = True
        dev = fs.device
        return gaussian_ce_loss(fs, ft, sx.to(dev), tx.to(dev), valid.to(dev), cfg.temperature, cfg.window, cfg.sigma)

    def train_step(self) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        rows = self.batch_rows(self.step)
        loss = self.loss_for(rows, self.step) if rows else None
        if loss is not None:
            loss.backward()
        value = float(loss.detach()) if loss is not None else 0.0
        if self.world > 1:
            import torch.distributed as dist

            for p in self.prompt.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world
            t = torch.tensor([value], device=p.grad.device)
            dist.all_reduce(t)
            value = float(t) / self.world
        self.opt.step()
        self.step += 1
        return value

    # ------------------------------------------------------------------ validation
    def validate(self) -> float | None:
        """PCK@0.1 per image (SD4Match frame and threshold) on the validation pairs."""
        if self.val_rows is None or self.val_rows.num_rows == 0:
            return None
        from benchmarks.matchers.base import Pair
        from benchmarks.pck import PairArrays, hits, per_pair
        from benchmarks.protocol import protocols_for

        from ..methods.sd4match import ClassMatcher, CPMMatcher, SingleMatcher

        cls = {"single": SingleMatcher, "class": ClassMatcher, "cpm": CPMMatcher}[self.cfg.variant]
        cfg = self.cfg
        m = cls.from_settings(None, model_id=cfg.model_id, dino_id=cfg.dino_id, dino_pos=cfg.dino_pos, checkpoint="(training)",
                              image_size=cfg.image_size, t=cfg.t, ensemble=1, up_block=cfg.up_block,
                              readout="kernel-soft-argmax", seed=cfg.seed, device=str(self.device),
                              dtype=cfg.dtype, batch_size=cfg.batch_size)
        m._sd, m._prompt, m._encoder, m._dino = self.sd, self.prompt.eval(), self.encoder, self.dino
        m._ckpt_meta = {"sha256": f"step{self.step}"}
        try:
            pairs = [Pair(r, self.root) for r in self.val_rows.to_pylist()]
            preds = []
            for b in range(0, len(pairs), cfg.batch_size):
                preds += m.predict(pairs[b:b + cfg.batch_size])["kernel-soft-argmax"]
        finally:
            self.prompt.train()
        arrays = PairArrays.from_table(self.val_rows)
        xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in preds]) if preds else np.zeros((0, 2))
        proto = dataclasses.replace(protocols_for(cfg.dataset, ["sd4match"])[0], alphas=(0.1,))
        correct, counts = per_pair(hits(arrays, xy, proto), arrays.offsets)
        return float((correct[0] / counts).mean())
