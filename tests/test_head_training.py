"""Head training (GeoAware-SC's recipe, DIY-SC adapters) on the tiny random backbones: end to end
through the CLI, the feature cache by content, exact resume, the recipe's pieces, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from sd4match.train import main as train_cli

from .test_golden import golden


def _root(tmp_path: Path, seed: int = 3) -> Path:
    """A SPair-71k root in the official layout with textured images (4 train, 3 val, 2 test pairs)."""
    from PIL import Image

    from loaders.testing import write_spair_root

    root = tmp_path / "spair"
    write_spair_root(root, {"trn": 4, "val": 3, "test": 2}, seed=seed, images=True)
    rng = np.random.default_rng(seed)
    for p in sorted((root / "JPEGImages").rglob("*.jpg")):
        w, h = Image.open(p).size
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
    return root


@pytest.fixture(scope="module")
def spair(tmp_path_factory):
    return _root(tmp_path_factory.mktemp("heads"))


def _train(root, out, cache, *extra, variant="geoaware-head"):
    return train_cli(["--variant", variant, "--preset", "tiny", "--dataset", "spair-71k", "--data-root", str(root),
                      "--out", str(out), "--quiet", "--set", f"cache_dir={cache}", *extra])


def _log(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiny_head_trains_then_evaluates_through_geoaware_and_lands_in_the_leaderboard(spair, tmp_path, capsys):
    from benchmarks.run import main as run_cli
    from leaderboard.__main__ import main as board_cli
    from sd4match.methods.geoaware_head import head_metadata, load_head

    out, cache = tmp_path / "head", tmp_path / "cache"
    assert _train(spair, out, cache) == 0
    text = capsys.readouterr()
    size = next(line for line in text.err.splitlines() + text.out.splitlines() if line.startswith("feature cache /"))
    assert "22 maps (8 mirrored)" in size and "float32" in size  # 8 train images + mirrors, 6 validation images
    log = _log(out)
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]  # 4 pairs, batch 2, the recipe's 2 epochs on SPair-71k
    assert all(np.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in log)
    head = load_head(str(out / "best.safetensors"))  # the authors' key layout, strict
    assert head.projection_dim == 128 and head.describe()["bottleneck_channels"] == 32
    meta = head_metadata(str(out))
    assert meta["matcher"] == "geoaware" and meta["features"] == {"preset": "tiny"}
    best = max(float(r["val_pck"]) for r in log if r["val_pck"])
    best_step = next(int(r["step"]) for r in log if r["val_pck"] and float(r["val_pck"]) == best)
    assert meta["step"] == best_step

    # the head evaluates through the geoaware matcher; head= brings the features' preset along, and its
    # PCK@0.1 (per image, GeoAware-SC's protocol) on the validation pairs is the one training selected by
    ev = tmp_path / "eval"
    assert run_cli(["--matcher", "geoaware", "--set", f"head={out}", "--dataset", "spair-71k", "--data-root",
                    str(spair), "--split", "val", "--protocol", "geoaware", "--out", str(ev), "--quiet"]) == 0
    assert "using preset tiny, the one it was trained with" in capsys.readouterr().err
    with open(ev / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["readout"] == "geoaware-soft-argmax" and r["aggregate"] == "image"
                and float(r["alpha"]) == 0.1 and r["category"] == "all" and r["metric"] == "pck"
                and r["keypoints"] == "all"]
    assert len(rows) == 1 and abs(float(rows[0]["pck"]) - best) < 1e-6  # both written with 6 digits
    run = json.loads((ev / "run.json").read_text())
    assert run["matcher_info"]["head"]["projection_dim"] == 128
    assert pq.read_table(ev / "predictions.parquet").num_rows > 0
    board = tmp_path / "board"
    assert board_cli(["build", str(ev), "--out", str(board), "--format", "md,csv", "--figures", "png"]) == 0
    assert "head=head@" in (board / "spair-71k-val.md").read_text()  # the head named by its content hash

    # a head trained on geoaware's features is refused by the other matcher
    assert run_cli(["--matcher", "diy-sc", "--set", f"head={out}", "--dataset", "spair-71k", "--data-root",
                    str(spair), "--split", "val", "--out", str(tmp_path / "wrong"), "--quiet"]) != 0
    assert "evaluate it with --matcher geoaware" in capsys.readouterr().err


def test_cached_features_serve_other_heads_and_renamed_images_without_any_backbone(spair, tmp_path, capsys,
                                                                                   monkeypatch):
    import shutil

    from sd4match.methods.frame import FrameMatcher
    from sd4match.methods.sd_frame import SDFrameMatcher

    cache = tmp_path / "cache"
    assert _train(spair, tmp_path / "a", cache) == 0
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 22

    def no_backbone(*a, **k):
        raise AssertionError("a backbone ran although every feature map is cached")

    monkeypatch.setattr(SDFrameMatcher, "sd_layers", no_backbone)
    monkeypatch.setattr(FrameMatcher, "dino_maps", no_backbone)
    moved = tmp_path / "moved"  # the same pictures under another root: the cache is keyed by content
    shutil.copytree(spair, moved)
    capsys.readouterr()
    assert _train(moved, tmp_path / "b", cache, "--set", "projection_dim=64", "--set", "bottleneck=32") == 0
    assert "0 maps computed, 22 found in the cache" in capsys.readouterr().err
    assert load_file(str(tmp_path / "b" / "last.safetensors"))["bottleneck_layers.0.0.conv3.weight"].shape[0] == 64

    # a damaged entry counts as missing: computed again (the backbone is back for it)
    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:50])
    assert _train(spair, tmp_path / "c", cache) == 0
    assert "1 maps computed, 21 found in the cache" in capsys.readouterr().err


def test_float16_cache_halves_the_size_and_trains(spair, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert _train(spair, tmp_path / "h16", cache, "--set", "cache_dtype=float16") == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("feature cache /"))
    assert "float16" in line and "(9.0 KiB per map)" in line  # 72 x 8 x 8 x 2 bytes
    (folder,) = [d for d in cache.iterdir()]
    assert folder.name.endswith("-float16")
    x = load_file(str(next(folder.glob("*.safetensors"))))["x"]
    assert x.dtype == torch.float16
    assert all(np.isfinite(float(r["loss"])) for r in _log(tmp_path / "h16"))


def test_interrupted_then_resumed_equals_uninterrupted_with_the_one_cycle_schedule(spair, tmp_path, monkeypatch):
    from sd4match.training.head_trainer import HeadTrainer

    cache = tmp_path / "cache"
    extra = ["--epochs", "3", "--set", "scheduler=one-cycle", "--set", "save_every=1"]
    assert _train(spair, tmp_path / "one", cache, *extra) == 0
    real = HeadTrainer.train_step

    def interrupt(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(HeadTrainer, "train_step", interrupt)
    assert _train(spair, tmp_path / "two", cache, *extra) == 130
    monkeypatch.undo()
    assert _train(spair, tmp_path / "two", cache, *extra, "--resume") == 0
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _log(tmp_path / "one")] == [r["loss"] for r in _log(tmp_path / "two")]
    state = torch.load(tmp_path / "two" / "checkpoints" / "step-00000006" / "state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 6  # the one-cycle schedule was resumed, not restarted


def test_diy_sc_adapter_trains_on_dino_tokens(spair, tmp_path):
    from sd4match.methods.geoaware_head import head_metadata

    out = tmp_path / "diy"
    assert _train(spair, out, tmp_path / "cache", variant="diy-sc-head") == 0
    meta = head_metadata(str(out))
    assert meta["matcher"] == "diy-sc" and len(meta["feature_dims"]) == 1


def test_pair_augmentation_uses_the_training_flip_tables_of_the_loss_fixture():
    from benchmarks.flips import permutation, swaps_for, train_swaps_for

    meta = json.loads(golden("heads", "inputs.json").read_text())["loss"]
    perm = meta["permute_list"]
    assert permutation(train_swaps_for("spair-71k", meta["category"]), len(perm)) == perm
    # bus: the one category whose training table differs from the evaluation table (README)
    bus = permutation(train_swaps_for("spair-71k", "bus"), 30)
    assert bus[10] == 20 and bus[28] == 29 and bus[8] == 8
    assert permutation(swaps_for("spair-71k", "bus"), 30)[8] == 18
    assert permutation(train_swaps_for("ap-10k", "dog"), 17)[5] == 8


def test_init_follows_the_authors_load_rule_and_says_what_it_copied(spair, tmp_path, capsys):
    from sd4match.methods.geoaware_head import read_state

    cache = tmp_path / "cache"
    assert _train(spair, tmp_path / "stage1", cache, "--max-steps", "1") == 0
    start = read_state(str(tmp_path / "stage1" / "last.safetensors"))
    assert _train(spair, tmp_path / "stage2", cache, "--set", f"init={tmp_path / 'stage1'}", "--max-steps", "1",
                  "--set", "lr=1e-12", "--set", "weight_decay=0", "--set", "dropout=0") == 0
    assert "by the authors' rule" in capsys.readouterr().err
    after = read_state(str(tmp_path / "stage2" / "last.safetensors"))
    # a step at lr 1e-12 leaves the copied weights where stage 1 left them
    for k in ("mixing_weights", "bottleneck_layers.2.0.conv2.weight"):
        assert torch.allclose(after[k], start[k], atol=1e-9)


@pytest.mark.parametrize("extra,match", [
    (["--set", "init=/nonexistent/head.pth"], "/nonexistent/head.pth: init= names no head file"),
    (["--set", "cache_dtype=bfloat16"], "cache_dtype must be float32 or float16"),
    (["--set", "dropout=1.5"], "dropout must be a number in [0, 0.999]"),
    (["--set", "projection_dim=48"], "multiples of the head's 32 GroupNorm groups"),
    (["--set", "scheduler=cosine"], "scheduler must be one of one-cycle, none"),
    (["--set", "val_limit=3"], "has no setting 'val_limit'"),
])
def test_bad_head_training_settings_are_one_line_errors(spair, tmp_path, capsys, extra, match):
    assert _train(spair, tmp_path / "bad", tmp_path / "cache", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "checkpoint").exists()


def test_recipe_stage_two_needs_the_stage_one_head(spair, tmp_path, capsys):
    code = train_cli(["--variant", "geoaware-head", "--preset", "geoaware-spair", "--dataset", "spair-71k",
                      "--data-root", str(spair), "--out", str(tmp_path / "s2")])
    assert code == 2 and "--set init=" in capsys.readouterr().err


def test_dry_run_counts_the_real_heads(capsys):
    assert train_cli(["--variant", "geoaware-head", "--dry-run"]) == 0
    assert train_cli(["--variant", "diy-sc-head", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[640, 1280, 1280, 768] -> 768" in out and "[768] -> 768" in out
