"""Training under faults: planted pickles, crashes at every write of a checkpoint step, Ctrl-C,
nonsense settings, an --out in the way."""

from __future__ import annotations

import csv
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from loaders.testing import write_pfwillow_root
from sd4match.train import main as train_cli


@pytest.fixture(scope="module")
def willow(tmp_path_factory):
    root = tmp_path_factory.mktemp("willow")
    write_pfwillow_root(root, n_images=3)
    return root


def _common(root):
    return ["--variant", "single", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
            "--split", "test", "--quiet", "--set", "save_every=2", "--set", "image_size=32"]


class Crash(Exception):
    pass


class Planted:
    def __reduce__(self):
        return (os.system, ("touch PLANTED_RAN",))


def test_planted_optimiser_state_cannot_run_code(willow, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert train_cli(_common(willow) + ["--max-steps", "2", "--out", str(out)]) == 0
    step_dir = out / "checkpoints" / (out / "checkpoint").read_text().strip()
    (step_dir / "state.pt").write_bytes(pickle.dumps({"step": 2, "optimizer": Planted(), "best": 0.0}))
    monkeypatch.chdir(tmp_path)
    assert train_cli(_common(willow) + ["--max-steps", "4", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "state.pt: not a readable optimiser state" in err and "\n" not in err
    assert not (tmp_path / "PLANTED_RAN").exists()


def _tokens(out):
    return load_file(str(out / "last.safetensors"))["tokens"]


def test_crash_at_every_write_of_a_checkpoint_step_resumes_exactly(willow, tmp_path, monkeypatch):
    """The checkpoint step at step 4 is interrupted before each of its writes in turn (prompt files,
    optimiser state, log, the folder rename, the pointer switch, the published copies); --resume then
    ends with the parameters and log of an uninterrupted run."""
    import shutil

    import loaders.atomic
    import sd4match.checkpoint
    from sd4match.train import Trainer

    ref = tmp_path / "ref"
    assert train_cli(_common(willow) + ["--max-steps", "6", "--out", str(ref)]) == 0
    want, want_log = _tokens(ref), (ref / "train_log.csv").read_text()

    writes = {"sd4match.checkpoint.save": sd4match.checkpoint.save, "torch.save": torch.save,
              "os.replace": os.replace, "shutil.copyfile": shutil.copyfile,
              "loaders.atomic.write_text": loaders.atomic.write_text}
    real_save = Trainer.save
    k = 0
    while True:
        state = {"active": False, "count": 0, "crashed": False}

        def wrap(fn, state=state, k=k):
            def inner(*a, **kw):
                if state["active"]:
                    if state["count"] == k:
                        state["crashed"] = True
                        raise Crash
                    state["count"] += 1
                return fn(*a, **kw)
            return inner

        def save(self, *a, state=state, **kw):
            state["active"] = self.step == 4
            try:
                return real_save(self, *a, **kw)
            finally:
                state["active"] = False

        out = tmp_path / f"crash{k}"
        with monkeypatch.context() as mp:
            for name, fn in writes.items():
                module, attr = name.rsplit(".", 1)
                mp.setattr(f"{module}.{attr}", wrap(fn))
            mp.setattr(Trainer, "save", save)
            try:
                train_cli(_common(willow) + ["--max-steps", "6", "--out", str(out)])
            except Crash:
                pass
        if not state["crashed"]:
            break  # every write of the step has been interrupted once
        assert train_cli(_common(willow) + ["--max-steps", "6", "--out", str(out), "--resume"]) == 0, f"crash point {k}"
        assert torch.equal(_tokens(out), want), f"crash point {k}: parameters differ"
        assert (out / "train_log.csv").read_text() == want_log, f"crash point {k}: log differs"
        k += 1
    assert k >= 6  # prompt, optimiser state, rename, pointer, published copies were all hit


def test_ctrl_c_exits_130_and_resumes(willow, tmp_path, monkeypatch, capsys):
    from sd4match.train import Trainer

    real = Trainer.train_step

    def interrupt(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", interrupt)
    assert train_cli(_common(willow) + ["--max-steps", "6", "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert train_cli(_common(willow) + ["--max-steps", "6", "--out", str(out), "--resume"]) == 0
    with open(out / "train_log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("setting, match", [
    ("seed=1.5", "seed"), ("lr=NaN", "lr"), ("lr=-1", "lr must be a finite number > 0"),
    ("temperature=0", "temperature must be"), ("window=0", "window must be an odd"), ("batch_size=true", "batch_size"),
    ("t=5000", "t must be an integer in 0..999"),
])
def test_nonsense_training_settings(willow, tmp_path, capsys, setting, match):
    assert train_cli(_common(willow) + ["--max-steps", "1", "--out", str(tmp_path / "o"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "checkpoint").exists()


@pytest.mark.parametrize("setting, match", [
    ("seed=1.5", "seed"), ("temperature=-1", "temperature"), ("batch_size=true", "batch_size"),
    ("window_radius=-1", "window_radius"), ("ensemble=0", "ensemble"), ("t=-3", "t must be"),
])
def test_nonsense_matcher_settings(setting, match):
    from benchmarks.matchers.base import ConfigError, parse_settings
    from sd4match.methods.dift import DiftMatcher

    with pytest.raises(ConfigError, match=match):
        DiftMatcher.from_settings("tiny", **parse_settings({}, [setting]))


def test_out_is_a_file(willow, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert train_cli(_common(willow) + ["--max-steps", "1", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert train_cli(_common(willow) + ["--max-steps", "1", "--out", str(f / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_config_json_list_is_refused(willow, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(_common(willow) + ["--max-steps", "2", "--out", str(out)]) == 0
    (out / "config.json").write_text("[1, 2]")
    assert train_cli(_common(willow) + ["--max-steps", "4", "--out", str(out), "--resume"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
