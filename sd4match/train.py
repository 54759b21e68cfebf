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

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dino import default_dino_id
from .models import default_model_id
from .prompts import PROMPT_FORMAT, VARIANTS

DEFAULT_EPOCHS = {"spair-71k": 5, "pf-pascal": 90, "pf-willow": 1}
#: checkpoint steps live in OUT/CHECKPOINTS/step-NNNNNNNN; OUT/POINTER names the current one
CHECKPOINTS, POINTER = "checkpoints", "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    dataset: str
    data_root: str
    split: str = "trn"
    val_split: str = "val"
    model_id: str = field(default_factory=default_model_id)
    dino_id: str = field(default_factory=default_dino_id)
    dino_pos: str = "hub"
    image_size: int = 768
    t: int = 261
    ensemble: int = 1
    up_block: int = 1
    temperature: float = 0.04
    window: int = 7
    sigma: float = 1.5
    max_kps: int = 20
    lr: float = 0.01
    lr_linear: float = 0.001
    batch_size: int = 3
    epochs: int = 0  # 0: the dataset's reference number
    max_steps: int = 0  # 0: no limit
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    flip: bool = True
    val_limit: int = 0  # 0: the whole validation split
    val_every: int = 0  # steps; 0: after every epoch
    save_every: int = 50

    def __post_init__(self):
        import math

        bad = []
        for name in ("lr", "lr_linear", "temperature", "sigma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad.append(f"{name} must be a finite number > 0 (got {v!r})")
        if not (isinstance(self.window, int) and self.window >= 1 and self.window % 2 == 1):
            bad.append(f"window must be an odd integer >= 1 (got {self.window!r})")
        for name, low in (("max_kps", 1), ("ensemble", 1), ("batch_size", 1), ("save_every", 1), ("image_size", 16),
                          ("epochs", 0), ("max_steps", 0), ("val_limit", 0), ("val_every", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad.append(f"{name} must be an integer >= {low} (got {v!r})")
        if isinstance(self.t, bool) or not isinstance(self.t, int) or not 0 <= self.t <= 999:
            bad.append(f"t must be an integer in 0..999 (got {self.t!r})")
        if self.dino_pos not in ("hub", "transformers"):
            bad.append(f"dino_pos must be hub or transformers (got {self.dino_pos!r})")
        if bad:
            raise ValueError("; ".join(bad))

    def resolved_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS.get(self.dataset, 1)


PRESETS = {
    "tiny": {"model_id": "tiny", "dino_id": "tiny", "image_size": 64, "batch_size": 2, "val_limit": 6,
             "save_every": 5},
}


class TrainError(Exception):
    """Training cannot proceed; printed as one line."""


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
class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, rank: int = 0, world: int = 1):
        import torch

        import loaders
        from benchmarks.dense import resolve_device, resolve_dtype

        from .models import load_components
        from .prompts import PromptEncoder, build_prompt

        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world
        self.torch = torch
        dev = cfg.device
        if dev.startswith("cuda") and world > 1 and ":" not in dev:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        self.device = resolve_device(dev)
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
        from .features import SDFeaturizer

        comps = load_components(cfg.model_id, seed=cfg.seed)
        self.sd = SDFeaturizer(comps, cfg.up_block, self.device, self.dtype)
        self.width = int(comps.text_encoder.config.hidden_size)
        self.encoder = PromptEncoder(comps.text_encoder, comps.tokenizer)
        self.dino = None
        dino_dim, n_patches = 768, 256
        if cfg.variant == "cpm":
            from .dino import dims, load_dino

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

    # ------------------------------------------------------------------ pieces
    def _posterior(self, imgs, keys):
        torch = self.torch
        for i, k in enumerate(keys):  # one image at a time: the result must not depend on batch composition
            if k not in self.posteriors:
                mean, std = self.sd.posterior((imgs[i][None] * 2 - 1).to(self.device, self.dtype))
                self.posteriors[k] = (mean[0], std[0])
        return (torch.stack([self.posteriors[k][0] for k in keys]), torch.stack([self.posteriors[k][1] for k in keys]))

    def _dino_tokens(self, pils, keys):
        from .dino import patch_tokens, preprocess

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

        from .matcher import ClassMatcher, CPMMatcher, SingleMatcher

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

    # ------------------------------------------------------------------ files
    def save(self, with_best: bool = False) -> None:
        """One atomic checkpoint step.

        Everything of the step (``last.safetensors``, ``best.safetensors``, the optimiser ``state.pt``,
        ``train_log.csv``) is written into a fresh folder, the folder is renamed to
        ``checkpoints/step-NNNNNNNN``, and only then is the pointer file ``checkpoint`` switched to it
        (an atomic rename). Whatever the crash point, the pointer names a complete step, so
        ``--resume`` ends with the parameters of an uninterrupted run. The top-level ``last`` /
        ``best`` / ``train_log.csv`` are copies of the pointed step, refreshed on resume.
        """
        import shutil
        import tempfile

        from . import checkpoint as ckpt

        if self.rank != 0:
            return
        meta = {"variant": self.cfg.variant, "text_width": self.width, "categories": self.categories if self.cfg.variant == "class" else [],
                "dino_dim": self.dino_dim if self.cfg.variant == "cpm" else 0,
                "n_patches": self.n_patches if self.cfg.variant == "cpm" else 0, "step": self.step,
                "config": dataclasses.asdict(self.cfg)}
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:08d}"
        previous = self.current_step_dir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            self._write_step(tmp, ckpt, meta, with_best, previous)
            final = root / name
            if final.exists():  # a step written before a crash, never pointed at
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point_to(final)

    def _write_step(self, tmp: Path, ckpt, meta: dict, with_best: bool, previous) -> None:
        """The files of one checkpoint step; a write that fails (a full disk) is one TrainError line."""
        import shutil

        try:
            ckpt.save(self.prompt, tmp / ckpt.LAST, **meta)
            if with_best:
                ckpt.save(self.prompt, tmp / ckpt.BEST, **meta)
            elif previous is not None and (previous / ckpt.BEST).is_file():
                shutil.copyfile(previous / ckpt.BEST, tmp / ckpt.BEST)
            self.torch.save({"step": self.step, "optimizer": self.opt.state_dict(), "best": self.best}, tmp / "state.pt")
            (tmp / "train_log.csv").write_text(self._log_text())
        except OSError:
            raise
        except Exception as exc:  # torch.save / safetensors report a full disk as their own errors
            raise OSError(f"cannot write the checkpoint step ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None

    def _point_to(self, final: Path) -> None:
        """Commit a written step: switch the pointer to it, refresh the top-level copies, drop older steps."""
        import shutil

        from loaders.atomic import write_text

        write_text(self.out / POINTER, final.name + "\n")  # the commit
        self.publish(final)
        for d in final.parent.iterdir():  # older steps and leftovers of interrupted ones
            if d.name != final.name:
                shutil.rmtree(d, ignore_errors=True)

    def _log_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["step", "epoch", "loss", "val_pck"], lineterminator="\n")
        w.writeheader()
        w.writerows(self.log)
        return buf.getvalue()

    def current_step_dir(self) -> Path | None:
        """The step folder the pointer names, or None (no checkpoint yet)."""
        pointer = self.out / POINTER
        if not pointer.is_file():
            return None
        name = pointer.read_text(errors="replace").strip()
        if not re.fullmatch(r"step-\d{8}", name) or not (self.out / CHECKPOINTS / name).is_dir():
            raise TrainError(f"{pointer}: names {name[:40]!r}, not a checkpoint folder of {self.out / CHECKPOINTS}")
        return self.out / CHECKPOINTS / name

    def publish(self, step_dir: Path) -> None:
        """Copy the step's prompts and log to the top of ``--out`` (each copy atomic)."""
        import shutil

        from loaders.atomic import atomic_path

        from . import checkpoint as ckpt

        for name in (ckpt.LAST, ckpt.BEST, "train_log.csv"):
            if (step_dir / name).is_file():
                with atomic_path(self.out / name, suffix=Path(name).suffix) as tmp:
                    shutil.copyfile(step_dir / name, tmp)

    def resume(self) -> None:
        from . import checkpoint as ckpt

        step_dir = self.current_step_dir()
        if step_dir is None and (self.out / "state.pt").is_file() and (self.out / ckpt.LAST).is_file():
            step_dir = self.out  # a run written before checkpoint steps existed
        if step_dir is None:
            raise TrainError(f"{self.out}: nothing to resume (no {POINTER} file naming a checkpoint step)")
        try:
            saved = json.loads((self.out / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise TrainError(f"{self.out / 'config.json'}: unreadable ({type(exc).__name__}: {str(exc)[:100]})") from None
        if not isinstance(saved, dict):
            raise TrainError(f"{self.out / 'config.json'}: expected a JSON object, got {type(saved).__name__}")
        mine = dataclasses.asdict(self.cfg)
        differ = [k for k in mine if k not in ("max_steps", "epochs", "device") and saved.get(k) != mine[k]]
        if differ:
            raise TrainError(f"{self.out / 'config.json'}: --resume with different settings ({', '.join(differ)})")
        module, meta = ckpt.load(step_dir / ckpt.LAST, variant=self.cfg.variant, text_width=self.width,
                                 dino_dim=self.dino_dim if self.cfg.variant == "cpm" else None,
                                 n_patches=self.n_patches if self.cfg.variant == "cpm" else None)
        if meta["prompt_format"] != PROMPT_FORMAT:
            raise TrainError(f"{step_dir / ckpt.LAST}: prompt format {meta['prompt_format']} (trained before corrbench "
                             f"adopted SD4Match's prompt encoding) cannot be resumed; evaluate it as it is, or start a new run")
        self.prompt.load_state_dict(module.state_dict())
        try:  # tensors and plain containers only: a planted pickle cannot run code here
            state = self.torch.load(step_dir / "state.pt", map_location=self.device, weights_only=True)
            self.opt.load_state_dict(state["optimizer"])
            self.step, self.best = int(state["step"]), float(state["best"])
        except Exception as exc:
            raise TrainError(f"{step_dir / 'state.pt'}: not a readable optimiser state ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        if int(meta.get("step", self.step)) != self.step:
            raise TrainError(f"{step_dir}: prompts of step {meta.get('step')} beside optimiser state of step {self.step}")
        self.log = []
        if (step_dir / "train_log.csv").is_file():
            with open(step_dir / "train_log.csv") as fh:
                self.log = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.step]
        if step_dir != self.out:
            self.publish(step_dir)

    def run(self, progress: bool = True) -> None:
        cfg = self.cfg
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {cfg.variant}", unit="step")
        while self.step < self.total_steps:
            loss = self.train_step()
            epoch = (self.step - 1) // self.steps_per_epoch
            row = {"step": self.step, "epoch": epoch, "loss": f"{loss:.6f}", "val_pck": ""}
            end_of_epoch = self.step % self.steps_per_epoch == 0
            val_due = (cfg.val_every and self.step % cfg.val_every == 0) or (not cfg.val_every and end_of_epoch)
            best = False
            if val_due or self.step == self.total_steps:
                pck = self.validate() if self.rank == 0 else None
                if pck is not None:
                    row["val_pck"] = f"{pck:.6f}"
                    if pck > self.best:
                        self.best, best = pck, True
            # no validation split: nothing is called "best"; the result is last.safetensors
            self.log.append(row)
            if self.step % cfg.save_every == 0 or best or self.step == self.total_steps or end_of_epoch:
                self.save(with_best=best)
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
        if bar:
            bar.close()


# ---------------------------------------------------------------------------------------- CLI
def dry_run(variant: str, dataset: str) -> str:
    """Trainable parameter count at the real sizes (text width 1024, DINOv2-base 256 x 768), no weights."""
    import torch

    from loaders import pfpascal, pfwillow, spair

    from .prompts import build_prompt, count_parameters

    cats = {"spair-71k": spair.CATEGORIES, "pf-pascal": pfpascal.CLASSES,
            "pf-willow": sorted({s.split("(")[0] for s in pfwillow.SUBSETS})}[dataset]
    with torch.device("meta"):
        module = build_prompt(variant, 1024, cats, dino_dim=768, n_patches=256)
    n = count_parameters(module)
    if variant == "class":
        return (f"class: {n:,} trainable parameters = {n // len(cats):,} per category x {len(cats)} "
                f"{dataset} categories (75 x 1024 each)")
    detail = {"single": "one 75 x 1024 prompt", "cpm": "25 x 1024 global + Linear(1536->1024) + Linear(256->256) + "
              "50 x 1024 position + 50 x 1024 alpha; DINOv2-base 256 x 768 tokens"}[variant]
    return f"{variant}: {n:,} trainable parameters ({detail})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sd4match.train", description="Train SD4Match prompts.")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--dataset", default="spair-71k")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--split", default="trn", help="training split (default trn; any split is accepted)")
    p.add_argument("--out", type=Path)
    p.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model-id", default=None)
    p.add_argument("--dino-id", default=None)
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the trainable parameter count at real sizes and exit")
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(args) -> TrainConfig:
    from benchmarks.matchers.base import config_from, parse_settings

    base = {}
    if args.preset:
        if args.preset not in PRESETS:
            raise TrainError(f"unknown preset {args.preset!r}; valid: {', '.join(PRESETS)}")
        base.update(PRESETS[args.preset])
    flags = ("device", "dtype", "batch_size", "max_steps", "epochs", "seed", "model_id", "dino_id", "val_limit")
    base.update(parse_settings({f: getattr(args, f) for f in flags}, args.set))
    base.update(variant=args.variant, dataset=args.dataset, data_root=str(args.data_root), split=args.split)
    cfg = config_from(TrainConfig, base, "sd4match.train")
    if cfg.batch_size < 1 or cfg.max_steps < 0 or cfg.epochs < 0:
        raise TrainError("--batch-size must be >= 1, --max-steps and --epochs >= 0")
    return cfg


def main(argv: list[str] | None = None) -> int:
    from benchmarks.matchers.base import ConfigError, MatcherError
    from loaders import DatasetError

    args = build_parser().parse_args(argv)
    if args.dry_run:
        try:
            print(dry_run(args.variant, args.dataset))
        except KeyError:
            print(f"error: unknown dataset {args.dataset!r}", file=sys.stderr)
            return 2
        return 0
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        if args.out is None:
            raise TrainError("--out is required (or --dry-run)")
        import loaders

        loaders.api.check_names(args.dataset, args.split)
        # like benchmarks.run: without --data-root, the dataset's folder in the data home ($CORRBENCH_DATA)
        args.data_root = loaders.api.ensure_root(args.dataset, args.data_root)
        cfg = config_from_args(args)
        out = args.out
        from .checkpoint import LAST

        if out.exists() and not out.is_dir():
            raise TrainError(f"{out}: --out is a file, not a folder")
        if not args.resume and ((out / LAST).exists() or (out / POINTER).exists()):
            raise TrainError(f"{out}: already holds a training run; pass --resume or choose another --out")
        if world > 1:
            import torch
            import torch.distributed as dist

            dist.init_process_group("nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, out, rank, world)
        if args.resume:
            trainer.resume()
            if rank == 0:  # the resumed run's own max_steps / epochs are what config.json says from now on
                from loaders.atomic import write_text

                record = {**dataclasses.asdict(cfg), "resumed_from_step": trainer.step}
                write_text(out / "config.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        elif rank == 0:
            from loaders.atomic import write_text

            write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n")
        trainer.run(progress=not args.quiet)
        if rank == 0:
            result = (f"best validation PCK@0.1 {trainer.best:.4f} (best.safetensors)" if trainer.best >= 0 else
                      "no validation ran (no validation split): the result is last.safetensors, nothing is called best")
            print(f"trained {cfg.variant} prompts for {trainer.step} steps in {time.perf_counter() - t0:.1f} s; "
                  f"{result}; wrote {out}")
    except (TrainError, DatasetError, ConfigError, MatcherError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out under a file, read-only, full
        print(f"error: {getattr(exc, 'filename', None) or args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print(f"interrupted; {args.out} holds the last complete checkpoint step: continue with --resume", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
