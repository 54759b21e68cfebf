"""Checkpoint steps of a training run: written atomically, committed by a pointer switch, resumed exactly."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
from pathlib import Path

from .config import CHECKPOINTS, POINTER, TrainError


class CheckpointSteps:
    """Saving and resuming checkpoint steps (mixed into :class:`~sd4match.training.trainer.Trainer`)."""

    def _place(self, cfg, out: Path, rank: int, world: int) -> None:
        """The run's settings, folder, rank and device (``cuda`` under torchrun: the rank's own GPU)."""
        import torch

        from benchmarks.dense import resolve_device

        self.cfg, self.out, self.rank, self.world = cfg, out, rank, world
        self.torch = torch
        dev = cfg.device
        if dev.startswith("cuda") and world > 1 and ":" not in dev:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        self.device = resolve_device(dev)

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

        from .. import checkpoint as ckpt

        if self.rank != 0:
            return
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:08d}"
        previous = self.current_step_dir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            self._write_step(tmp, ckpt, with_best, previous)
            final = root / name
            if final.exists():  # a step written before a crash, never pointed at
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._point_to(final)

    # ------------------------------------------------------------------ what a trainer provides
    def write_weights(self, path: Path) -> None:
        """Write the trained parameters (with their metadata) to ``path``."""
        raise NotImplementedError

    def restore_weights(self, step_dir: Path) -> int | None:
        """Load the parameters of ``step_dir``; returns the step their metadata records (None: not recorded)."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """More optimiser-side state for ``state.pt`` (a learning-rate schedule); tensors and plain values."""
        return {}

    def restore_extra(self, state: dict) -> None:
        return None

    # ------------------------------------------------------------------ steps
    def _write_step(self, tmp: Path, ckpt, with_best: bool, previous) -> None:
        """The files of one checkpoint step; a write that fails (a full disk) is one TrainError line."""
        import shutil

        try:
            self.write_weights(tmp / ckpt.LAST)
            if with_best:
                self.write_weights(tmp / ckpt.BEST)
            elif previous is not None and (previous / ckpt.BEST).is_file():
                shutil.copyfile(previous / ckpt.BEST, tmp / ckpt.BEST)
            self.torch.save({"step": self.step, "optimizer": self.opt.state_dict(), "best": self.best,
                             **self.extra_state()}, tmp / "state.pt")
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

        from .. import checkpoint as ckpt

        for name in (ckpt.LAST, ckpt.BEST, "train_log.csv"):
            if (step_dir / name).is_file():
                with atomic_path(self.out / name, suffix=Path(name).suffix) as tmp:
                    shutil.copyfile(step_dir / name, tmp)

    def resume(self) -> None:
        from .. import checkpoint as ckpt

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
        recorded = self.restore_weights(step_dir)
        try:  # tensors and plain containers only: a planted pickle cannot run code here
            state = self.torch.load(step_dir / "state.pt", map_location=self.device, weights_only=True)
            self.opt.load_state_dict(state["optimizer"])
            self.step, self.best = int(state["step"]), float(state["best"])
            self.restore_extra(state)
        except Exception as exc:
            raise TrainError(f"{step_dir / 'state.pt'}: not a readable optimiser state ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        if recorded is not None and recorded != self.step:
            raise TrainError(f"{step_dir}: weights of step {recorded} beside optimiser state of step {self.step}")
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
            val_due = (cfg.val_every and self.step % cfg.val_every == 0) or (not cfg.val_every and end_of_epoch) \
                or (end_of_epoch and getattr(cfg, "val_epoch_end", False))
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
