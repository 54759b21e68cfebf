"""Training of the aggregation head (GeoAware-SC supervised, DIY-SC adapters) on frozen features.

    python -m sd4match.train --variant {geoaware-head,diy-sc-head} --dataset D --data-root DIR --out DIR
        [--preset tiny|geoaware-ap10k|geoaware-spair] [--set init=HEAD] [--set cache_dtype=float16] [--resume]

The backbone runs once per image (and once per mirrored image, for the pair augmentation): its
features, the head's inputs exactly as the ``geoaware`` / ``diy-sc`` matcher gathers them, go to a
content-keyed cache (:mod:`~sd4match.training.head_features`) whose size is printed before it is
filled. Every step, every epoch after the first and every other head on the same features read the
cache; validation runs the matcher's own prediction path with the cache plugged in.

Everything random is a function of (seed, step, pair): the pair order of epoch e, each pair's
input dropout and flow noise. A run resumed from its last saved step ends with the parameters of an
uninterrupted one; ``torchrun`` splits each global batch across ranks and sums the gradients of the
per-pair losses divided by the global batch, so N processes compute the single process's step.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from benchmarks.console import say

from .config import TrainError
from .head_config import HeadTrainConfig
from .head_features import FeatureCache, human, settings_key
from .steps import CheckpointSteps


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def build_matcher(cfg: HeadTrainConfig, device: str):
    """The matcher whose features the head is trained on (its head slot holds the training head)."""
    from benchmarks.registry import load_class

    cls = load_class(cfg.matcher)
    settings = {k: v for k, v in cfg.feature_settings().items() if k != "preset"}
    # the matcher's own seed (its fixed SD noise, the tiny models' weights): the features evaluation sees
    return cls.from_settings(cfg.feature_preset or None, **settings, head="random", device=device, dtype=cfg.dtype,
                             batch_size=1)


def default_cache_root() -> Path:
    base = os.environ.get("CORRBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "corrbench")
    return Path(base) / "head-features"


class HeadTrainer(CheckpointSteps):
    def __init__(self, cfg: HeadTrainConfig, out: Path, rank: int = 0, world: int = 1):
        import loaders
        from benchmarks.flips import permutation, train_swaps_for

        self._place(cfg, out, rank, world)
        if cfg.init and not Path(cfg.init).expanduser().exists():
            raise TrainError(f"{cfg.init}: init= names no head file or head training folder")
        self.root = Path(cfg.data_root)
        self.rows = [r for r in loaders.load(cfg.dataset, self.root, cfg.split).to_pylist() if len(r["src_kps"]) > 0]
        if not self.rows:
            raise TrainError(f"{cfg.dataset} {cfg.split}: no pairs with keypoints to train on")
        self.val_rows = None
        if cfg.val_split and cfg.val_split in loaders.api.SPLITS_OF[cfg.dataset] and cfg.val_split != cfg.split:
            table = loaders.load(cfg.dataset, self.root, cfg.val_split)
            self.val_table = table.take(self._per_category(table))
            self.val_rows = self.val_table.to_pylist()
        self.matcher = build_matcher(cfg, str(self.device))
        self.S = int(self.matcher.config.image_size)
        cache_root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root()
        self.cache = FeatureCache(cache_root, settings_key(self.matcher), cfg.cache_dtype, owner=self.matcher)
        self.matcher.input_cache = self.cache
        self.perms = {}
        for r in self.rows:
            swaps = train_swaps_for(cfg.dataset, r["category"]) if cfg.pair_augment else None
            if swaps is not None:
                n = max([max(p) for p in swaps] + [int(i) for i in r["kps_ids"]]) + 1
                self.perms[r["pair_id"]] = permutation(swaps, n)
        self.keys: dict[str, str] = {}
        self.prepare_features()
        self._build_head()
        self.step, self.log, self.best = 0, [], -1.0
        self.steps_per_epoch = math.ceil(len(self.rows) / cfg.batch_size)
        self.schedule_steps = self.steps_per_epoch * cfg.resolved_epochs()
        self.total_steps = min(self.schedule_steps, cfg.max_steps) if cfg.max_steps else self.schedule_steps
        self.sched = None
        if cfg.scheduler == "one-cycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.lr, total_steps=self.schedule_steps,
                                                             pct_start=cfg.pct_start)

    # ------------------------------------------------------------------ data
    def _per_category(self, table) -> list[int]:
        """Row indices of the validation pairs: ``val_per_category`` per category (a draw seeded by the
        run's seed; all of a category with fewer, and all pairs when 0); pairs without keypoints left out."""
        n_kps = [len(k) for k in table.column("src_kps").to_pylist()]
        cats = table.column("category").to_pylist()
        k = self.cfg.val_per_category
        out = []
        for cat in sorted(set(cats)):
            mine = [i for i, c in enumerate(cats) if c == cat and n_kps[i] > 0]
            if k and len(mine) > k:
                rng = np.random.default_rng([self.cfg.seed, len(mine)])
                mine = [mine[i] for i in sorted(rng.choice(len(mine), size=k, replace=False))]
            out += mine
        return sorted(out)

    def _entries(self) -> list[tuple[dict, str, bool]]:
        """(row, side, mirrored) of every feature map training and validation read."""
        out = []
        for r in self.rows:
            for side in ("src", "trg"):
                out.append((r, side, False))
                if r["pair_id"] in self.perms:
                    out.append((r, side, True))
        for r in self.val_rows or []:
            out += [(r, "src", False), (r, "trg", False)]
        return out

    def prepare_features(self) -> None:
        """Fill the feature cache (ranks share the images), printing its size before it is filled."""
        from benchmarks.matchers.base import Pair

        todo, seen, last = [], set(), (None, None, None)
        for r, side, flip in self._entries():
            ident = (r[f"{side}_image"], r["category"], flip)
            if ident not in seen:
                seen.add(ident)
                todo.append((r, side, flip))
        said, n_present = False, 0
        for j, (r, side, flip) in enumerate(todo):
            rel = r[f"{side}_image"]
            if rel not in self.keys:  # every rank knows every image's content key (the cache entries' names)
                img, info = self.matcher.load_images([Pair(r, self.root)])[rel]
                self.keys[rel], last = info.key, (rel, img, info)
            if j % self.world != self.rank:
                continue
            if self.cache.has(self.keys[rel], r["category"], flip):
                n_present += 1
            else:
                if last[0] != rel:
                    last = (rel, *self.matcher.load_images([Pair(r, self.root)])[rel])
                self.matcher.head_inputs([last[1]], [last[2]], flip)
                self.matcher.reset_caches()
            if not said and self.cache.shape is not None and self.rank == 0:
                said = True
                C, g, _ = self.cache.shape
                say(f"feature cache {self.cache.dir}: {len(todo)} maps ({sum(f for *_, f in todo)} mirrored) x "
                    f"{C} x {g} x {g} {self.cfg.cache_dtype} = {human(self.cache.size_bytes(len(todo)))} "
                    f"({human(self.cache.size_bytes(1))} per map)")
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if self.cache.widths is None:  # another rank filled everything: read one entry for the shape
            r, side, flip = todo[0]
            self.cache.load(self.keys[r[f"{side}_image"]], r["category"], flip)
        if self.rank == 0:
            say(f"feature cache: {self.cache.computed} maps computed, {n_present} found in the cache")

    # ------------------------------------------------------------------ head
    def _build_head(self) -> None:
        from ..methods.geoaware_head import AggregationHead, load_into, read_state

        cfg = self.cfg
        self.widths = list(self.cache.widths)
        self.matcher._widths = self.widths
        with torch.random.fork_rng(devices=[]):  # the initial head is a function of the seed
            torch.manual_seed(cfg.seed)
            self.head = AggregationHead(self.widths, cfg.projection_dim, cfg.bottleneck or None)
        if cfg.init:
            copied = load_into(self.head, read_state(cfg.init))
            if self.rank == 0:
                say(f"init {cfg.init}: copied {len(copied)} tensors by the authors' rule ({', '.join(copied[:3])}"
                    f"{' ...' if len(copied) > 3 else ''})")
        self.head = self.head.to(self.device).train()
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def write_weights(self, path: Path) -> None:
        from ..methods.geoaware_head import save_head

        save_head(self.head, path, matcher=self.cfg.matcher, features=self.cfg.feature_settings(), step=self.step,
                  config=dataclasses.asdict(self.cfg), feature_cache=self.cache.dir.name)

    def restore_weights(self, step_dir: Path) -> int | None:
        from .. import checkpoint as ckpt
        from ..methods.geoaware_head import head_metadata, read_state

        path = step_dir / ckpt.LAST
        try:
            self.head.load_state_dict(read_state(str(path)), strict=True)
        except RuntimeError as exc:
            raise TrainError(f"{path}: not a head of this run's widths ({str(exc).splitlines()[0][:120]})") from None
        step = head_metadata(str(path)).get("step")
        return int(step) if isinstance(step, int) else None

    def extra_state(self) -> dict:
        return {"scheduler": self.sched.state_dict()} if self.sched is not None else {}

    def restore_extra(self, state: dict) -> None:
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ steps
    def batch_rows(self, step: int) -> tuple[list[tuple[int, dict]], int]:
        """This rank's (index, row) of the step's global batch, and the global batch's size."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.rows))
        idx = order[k * self.cfg.batch_size:(k + 1) * self.cfg.batch_size]
        return [(int(i), self.rows[i]) for i in idx][self.rank::self.world], len(idx)

    def _keypoints(self, r: dict, side: str, n: int) -> torch.Tensor:
        from ..methods.frame_geometry import to_frame

        xy = np.asarray(r[f"{side}_kps"], dtype=np.float64).reshape(-1, 2)
        out = torch.zeros(n, 3, dtype=torch.float32)
        ok = np.isfinite(xy).all(axis=1)
        frame = to_frame(np.where(ok[:, None], xy, 0.0), r[f"{side}_width"], r[f"{side}_height"], self.S)
        for j, i in enumerate(int(i) for i in r["kps_ids"]):
            if ok[j]:
                out[i] = torch.tensor([frame[j, 0], frame[j, 1], 1.0])
        return out

    def _threshold(self, r: dict) -> float:
        """The target's threshold in frame pixels: its bounding box's longer side (the image's without one)."""
        scale = self.S / max(r["trg_width"], r["trg_height"])
        box = r.get("trg_bbox")
        if box is not None and len(box) == 4:
            return float(max(box[2] - box[0], box[3] - box[1]) * scale)
        return float(self.S)

    def pair_loss(self, index: int, r: dict, step: int) -> torch.Tensor:
        from ..methods.geoaware_head import descriptors
        from .head_loss import head_loss

        cfg = self.cfg
        gen = torch.Generator().manual_seed(_seed(cfg.seed, step, index))
        perm = self.perms.get(r["pair_id"])
        flips = (False, True) if perm is not None else (False,)
        maps = [self.cache.load(self.keys[r[f"{side}_image"]], r["category"], f) for f in flips for side in ("src", "trg")]
        x = torch.stack(maps)
        if cfg.dropout > 0:  # F.dropout on the whole input, drawn from the pair's own generator
            x = x * (torch.rand(x.shape, generator=gen) >= cfg.dropout) / (1 - cfg.dropout)
        out = self.head(x.to(self.device))
        d = [descriptors(o).reshape(o.shape[0], -1).T for o in out]
        g = int(out.shape[-1])
        n = max(len(perm) if perm is not None else 0, max(int(i) for i in r["kps_ids"]) + 1)
        k1, k2 = self._keypoints(r, "src", n).to(self.device), self._keypoints(r, "trg", n).to(self.device)
        if not bool(((k1[:, 2] > 0) & (k2[:, 2] > 0)).any()):
            return out.sum() * 0.0
        return head_loss(d[0], d[1], k1, k2, self.head.logit_scale, g, dense=cfg.dense, window=cfg.train_window,
                         perm=perm, d1_flip=d[2] if perm is not None else None,
                         d2_flip=d[3] if perm is not None else None, gaussian=cfg.gaussian,
                         threshold=self._threshold(r), generator=gen, anno=self.S)

    def train_step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        mine, B = self.batch_rows(self.step)
        total = sum((self.pair_loss(i, r, self.step) for i, r in mine), torch.zeros((), device=self.device)) / B
        if mine:
            total.backward()
        value = float(total.detach())
        if self.world > 1:
            import torch.distributed as dist

            for p in self.head.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            t = torch.tensor([value], device=self.device)
            dist.all_reduce(t)
            value = float(t)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.step += 1
        return value

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> float | None:
        """PCK@0.1 per image (GeoAware-SC's protocol: padded frame, bbox threshold, strict <) of the
        matcher's own readout on the validation pairs, through the matcher's prediction path."""
        if not self.val_rows:
            return None
        from benchmarks.matchers.base import Pair
        from benchmarks.pck import PairArrays, hits, per_pair
        from benchmarks.protocol import protocols_for

        m = self.matcher
        m._head = self.head.eval()
        try:
            readout = m.readouts[0]
            preds = []
            for r in self.val_rows:
                preds += m.predict([Pair(r, self.root)])[readout]
        finally:
            self.head.train()
            m.reset_caches()
        arrays = PairArrays.from_table(self.val_table)
        xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in preds])
        proto = next(p for p in protocols_for(self.cfg.dataset, ["geoaware"]) if p.aggregate == "image")
        proto = dataclasses.replace(proto, alphas=(0.1,))
        correct, counts = per_pair(hits(arrays, xy, proto), arrays.offsets)
        return float((correct[0] / counts).mean())
