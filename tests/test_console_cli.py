"""What a run prints and refuses: the compact summary with its banners, early refusals that leave
no folder, --list-matchers with presets, --show-config, --checkpoint bringing its model id, and
training's data home, resumed max_steps and "best" only after a validation."""

from __future__ import annotations

import json

import pytest

from benchmarks.run import main as run_cli
from loaders.testing import write_pfwillow_root, write_spair_root


@pytest.fixture(scope="module")
def willow(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "willow"
    write_pfwillow_root(root, subsets=("car(G)",), n_images=3)
    return root


def test_summary_after_a_run(willow, tmp_path, capsys):
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(willow),
                    "--limit", "4", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PARTIAL RUN: first 4 of 6 pairs" in out and "RANDOM WEIGHTS (tiny)" in out
    assert "protocol sd4match (frame resized-768x768" in out and "NaN" not in out and "nan" not in out
    table = [line.split()[0] for line in out.splitlines() if line.strip().startswith(("upsampled-nn", "kernel", "nn"))]
    assert {"upsampled-nn", "kernel-soft-argmax", "nn"} <= set(table)  # one row per readout
    assert " ± " in out


def test_geoaware_summary_has_only_its_alphas(tmp_path, capsys):
    root = tmp_path / "spair"
    write_spair_root(root, {"test": 6}, seed=1)
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(root), "--protocol", "geoaware",
                    "--protocol", "sd4match", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("readout"))
    assert "PCK@0.15" in header and "PCK@0.01" not in header  # sd4match is SPair's main protocol; no NaN columns
    assert "PCK@0.01 (none, protocol geoaware" in out  # said beside it, from the protocol that computes it
    assert "other protocols (geoaware)" in out and "nan" not in out.lower().replace("nanoseconds", "")


def test_refusals_come_before_the_model_and_leave_no_folder(tmp_path, capsys, monkeypatch):
    """--tta flip on a dataset without a left/right table, and a class checkpoint without a
    category's prompt, are refused before any model loads, and leave nothing behind."""
    import sd4match.methods.sd_base as base
    import sd4match.methods.sd_frame as Z

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Z, "load_components", no_model)
    monkeypatch.setattr(base, "load_components", no_model)
    willow = tmp_path / "willow"
    write_pfwillow_root(willow, subsets=("car(G)",), n_images=3)
    out = tmp_path / "refused"
    assert run_cli(["--matcher", "geoaware-zs", "--preset", "tiny", "--tta", "flip", "--dataset", "pf-willow",
                    "--data-root", str(willow), "--out", str(out)]) == 2
    assert "no left/right keypoint table for dataset 'pf-willow'" in capsys.readouterr().err
    assert not out.exists()
    # a class checkpoint whose prompts do not cover the dataset's categories
    from sd4match import checkpoint as ckpt
    from sd4match.backbones.tiny_sd import TINY_TEXT_DIM
    from sd4match.prompts import build_prompt

    file = tmp_path / "class.safetensors"
    ckpt.save(build_prompt("class", TINY_TEXT_DIM, ["dog"]), file, variant="class", text_width=TINY_TEXT_DIM,
              categories=["dog"], config={"model_id": "tiny"})
    assert run_cli(["--matcher", "class", "--checkpoint", str(file), "--dataset", "pf-willow", "--data-root",
                    str(willow), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no class prompt for category 'car'" in err and "using model_id 'tiny'" in err  # the model id came along
    assert not out.exists()
    # prompts of another width than the model's config
    wide = tmp_path / "wide.safetensors"
    ckpt.save(build_prompt("single", 1024, []), wide, variant="single", text_width=1024, config={})
    assert run_cli(["--matcher", "single", "--checkpoint", str(wide), "--model-id", "tiny", "--dataset", "pf-willow",
                    "--data-root", str(willow), "--out", str(out)]) == 2
    assert "prompts have width 1024, the text encoder of tiny has" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_fails_on_the_model_leaves_no_folder(willow, tmp_path, capsys):
    out = tmp_path / "nomodel"
    assert run_cli(["--matcher", "dift", "--model-id", str(tmp_path / "missing-model"), "--dataset", "pf-willow",
                    "--data-root", str(willow), "--out", str(out)]) == 2
    assert not out.exists()


def test_list_matchers_shows_presets_and_show_config(capsys):
    assert run_cli(["--list-matchers"]) == 0
    out = capsys.readouterr().out
    assert "--preset tiny: model_id=tiny" in out and "--preset supervised-eval: geoaware_window=7" in out
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--set", "t=101", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dift: dift (preset tiny; t=101; random weights: tiny)")
    assert any(line.split()[:2] == ["t", "101"] and "(changed)" in line for line in out.splitlines())
    assert run_cli(["--show-config"]) == 2


def test_training_data_home_resumed_max_steps_and_no_false_best(tmp_path, monkeypatch, capsys):
    from sd4match.train import main as train_cli

    home = tmp_path / "home"
    write_pfwillow_root(home / "PF-WILLOW", subsets=("car(G)",), n_images=3)
    monkeypatch.setenv("CORRBENCH_DATA", str(home))
    out = tmp_path / "t"
    base = ["--variant", "single", "--preset", "tiny", "--dataset", "pf-willow", "--split", "test", "--out", str(out),
            "--quiet"]
    assert train_cli([*base, "--max-steps", "2"]) == 0  # no --data-root: the data home's PF-WILLOW
    printed = capsys.readouterr().out
    assert "no validation ran" in printed and not (out / "best.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["max_steps"] == 2
    assert train_cli([*base, "--max-steps", "3", "--resume"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["max_steps"] == 3 and record["resumed_from_step"] == 2


def test_visualize_draws_the_methods_own_readout_with_its_protocol_and_orders_ties(willow, tmp_path, monkeypatch):
    import re

    import benchmarks.visualize as V

    out = tmp_path / "r"
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(willow),
                    "--out", str(out), "--quiet"]) == 0
    drawn = []
    monkeypatch.setattr(V, "draw_pair", lambda *a, **k: drawn.append(a[6]))
    written = V.visualize(out, willow, n_pairs=6, worst=True)
    assert len(drawn) == len(written) == 6
    parsed = [re.search(r": (\S+), readout (\S+), PCK@0.1 = (\d+)%\nprotocol original: frame original, threshold (\S+)", t)
              for t in drawn]
    assert all(p is not None for p in parsed), drawn[0]
    assert {p.group(2) for p in parsed} == {"upsampled-nn"}  # DIFT's own readout, not the alphabetical first
    assert all(t.startswith("dift (preset tiny; random weights: tiny): ") for t in drawn)
    keys = [(int(p.group(3)), p.group(1)) for p in parsed]
    assert keys == sorted(keys)  # worst first, equal PCK in pair-id order
