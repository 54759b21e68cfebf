"""SD4Match: prompt modules, loss, training (tiny preset, CPU), checkpoints and conversion."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.matchers.base import MatcherError, Pair
from sd4match import checkpoint as ckpt
from sd4match.convert import main as convert_cli
from sd4match.prompts import (
    CPM,
    ClassPrompt,
    PromptEncoder,
    SinglePrompt,
    build_prompt,
    count_parameters,
)
from sd4match.train import TrainConfig, Trainer
from sd4match.train import main as train_cli
from sd4match.training.loss import gaussian_ce_loss

from .conftest import shared


# ----------------------------------------------------------------------------- prompts
def test_real_size_parameter_counts():
    with torch.device("meta"):
        assert count_parameters(SinglePrompt(1024)) == 76_800
        assert count_parameters(ClassPrompt(1024, ["a", "b", "c"])) == 3 * 76_800
        assert count_parameters(CPM(1024, 768, 256)) == 1_767_680


def test_dry_run_prints_counts(capsys):
    for variant, n in (("single", "76,800"), ("cpm", "1,767,680"), ("class", "1,382,400")):
        assert train_cli(["--variant", variant, "--dry-run"]) == 0
        assert n in capsys.readouterr().out


def test_prompt_encoder_shapes_and_bos_eos():
    from sd4match.backbones.sd_models import load_components

    c = load_components("tiny")
    enc = PromptEncoder(c.text_encoder, c.tokenizer)
    tokens = torch.randn(2, 75, 16)
    ctx = enc(tokens)
    assert ctx.shape == (2, 77, 16)
    # causal mask: the BOS position does not see the learned tokens
    ctx2 = enc(tokens + torch.randn(2, 75, 16))
    torch.testing.assert_close(ctx[:, 0], ctx2[:, 0])
    assert not torch.allclose(ctx[:, 5], ctx2[:, 5])
    with pytest.raises(ValueError, match=r"prompt tokens must be \(B, 75, 16\)"):
        enc(torch.randn(1, 74, 16))


def test_cpm_forward_shape():
    m = CPM(16, 32, 16)
    out = m(["a", "b"], src_dino=torch.randn(2, 16, 32), trg_dino=torch.randn(2, 16, 32))
    assert out.shape == (2, 75, 16)
    with pytest.raises(ValueError, match="CPM expects DINOv2 tokens"):
        m(["a"], src_dino=torch.randn(1, 4, 32), trg_dino=torch.randn(1, 4, 32))


def test_class_prompt_unknown_category():
    with pytest.raises(KeyError, match="no class prompt for category 'cat'; prompts exist for: car, dog"):
        ClassPrompt(8, ["car", "dog"])(["cat"])


# ----------------------------------------------------------------------------- loss
def _hand_loss(src, trg, s_xy, t_xy, T, sigma, radius):
    """SD4Match's rule by hand: fixed Gaussian density weights, strict mask 0 < x < w-1, no renormalising."""
    v = src[:, s_xy[1], s_xy[0]]
    v = v / (np.linalg.norm(v) + 1e-6)
    t = trg / (np.linalg.norm(trg, axis=0, keepdims=True) + 1e-6)
    cos = np.einsum("c,chw->hw", v, t)
    p = np.exp(cos / T)
    p /= p.sum()
    h, w = cos.shape
    num = 0.0
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x, y = t_xy[0] + dx, t_xy[1] + dy
            if 0 < x < w - 1 and 0 < y < h - 1:
                g = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) / (2 * math.pi * sigma * sigma)
                num += g * math.log(p[y, x])
    return -num


@pytest.mark.parametrize("t_xy", [(2, 2), (0, 3), (4, 4)])
def test_loss_matches_hand_computation_5x5(t_xy):
    rng = np.random.default_rng(0)
    src = rng.normal(size=(4, 5, 5))
    trg = rng.normal(size=(4, 5, 5))
    args = (torch.tensor(src[None]), torch.tensor(trg[None]), torch.tensor([[[2.0, 0.0]]]),
            torch.tensor([[list(map(float, t_xy))]]), torch.tensor([[True]]))
    for window in (3, 7):  # window cells off the strict interior are masked, not renormalised
        got = gaussian_ce_loss(*args, temperature=0.5, window=window, sigma=1.5)
        assert got.item() == pytest.approx(_hand_loss(src, trg, (2, 0), t_xy, 0.5, 1.5, window // 2), rel=1e-5)


def test_loss_averages_valid_keypoints_and_pairs():
    rng = np.random.default_rng(1)
    src, trg = torch.tensor(rng.normal(size=(2, 4, 3, 3))), torch.tensor(rng.normal(size=(2, 4, 3, 3)))
    s = torch.tensor([[[0.0, 0.0], [2.0, 2.0]], [[1.0, 1.0], [0.0, 0.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[2.0, 1.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, False]])
    full = gaussian_ce_loss(src, trg, s, t, valid)
    a = gaussian_ce_loss(src[:1], trg[:1], s[:1, :1], t[:1, :1], valid[:1, :1])
    b = gaussian_ce_loss(src[:1], trg[:1], s[:1, 1:], t[:1, 1:], valid[:1, 1:])
    c = gaussian_ce_loss(src[1:], trg[1:], s[1:, :1], t[1:, :1], valid[1:, :1])
    assert full.item() == pytest.approx(((a + b) / 2 + c).item() / 2, rel=1e-6)


# ----------------------------------------------------------------------------- training
def _cfg(variant, root, **kw):
    base = dict(variant=variant, dataset="pf-willow", data_root=str(root), split="test", model_id="tiny",
                dino_id="tiny", image_size=64, batch_size=2, save_every=3, val_limit=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("variant", ["single", "class", "cpm"])
def test_one_step_changes_only_prompt_parameters(variant, tmp_path):
    root = shared("PF-WILLOW")
    tr = Trainer(_cfg(variant, root), tmp_path)
    frozen = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in (("vae", tr.sd.c.vae), ("unet", tr.sd.c.unet), ("text", tr.sd.c.text_encoder))}
    if tr.dino is not None:
        frozen["dino"] = {k: v.clone() for k, v in tr.dino[0].state_dict().items()}
    before = {k: v.clone() for k, v in tr.prompt.state_dict().items()}
    tr.opt.zero_grad()
    loss = tr.loss_for(tr.batch_rows(0), 0)
    loss.backward()
    for name, p in tr.prompt.named_parameters():
        if variant == "class":
            continue  # only the batch's categories get gradient; checked below
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if variant == "class":
        cats = {r["category"] for r in tr.batch_rows(0)}
        for c in cats:
            assert tr.prompt.tokens.grad[tr.prompt.index[c]].abs().sum() > 0
    tr.opt.step()
    after = tr.prompt.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name, m in (("vae", tr.sd.c.vae), ("unet", tr.sd.c.unet), ("text", tr.sd.c.text_encoder)):
        for k, v in m.state_dict().items():
            assert torch.equal(frozen[name][k], v), f"{name}.{k} changed"
        assert not any(p.requires_grad for p in m.parameters())
    if tr.dino is not None:
        for k, v in tr.dino[0].state_dict().items():
            assert torch.equal(frozen["dino"][k], v)


def test_short_run_lowers_loss_and_checkpoint_reloads(tmp_path):
    root = shared("PF-WILLOW")
    out = tmp_path / "single"
    assert train_cli(["--variant", "single", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                      "--split", "test", "--max-steps", "30", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    with open(out / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert {p.name for p in out.iterdir()} >= {"last.safetensors", "config.json", "train_log.csv"}
    assert not (out / "best.safetensors").exists()  # PF-Willow has no validation split: nothing is called best
    # reload: two matchers from the checkpoint agree bit for bit, and with the trained module
    import loaders
    from sd4match.methods.sd4match import SingleMatcher

    table = loaders.load("pf-willow", root, "test").slice(0, 3)
    pairs = [Pair(r, root) for r in table.to_pylist()]
    a = SingleMatcher.from_settings("tiny", checkpoint=str(out)).predict(pairs)
    b = SingleMatcher.from_settings("tiny", checkpoint=str(out / "last.safetensors")).predict(pairs)
    for r in a:
        for x, y in zip(a[r], b[r]):
            np.testing.assert_array_equal(x, y)
    # the trained prompt differs from the seeded initial one, and so do the features it gives
    init = SingleMatcher.from_settings("tiny")
    init._setup_prompt()
    trained = SingleMatcher.from_settings("tiny", checkpoint=str(out))
    trained._setup_prompt()
    assert not torch.equal(init._prompt.tokens, trained._prompt.tokens)
    sd = load_file(str(out / "last.safetensors"))
    assert sd["tokens"].shape == (75, 16)


def test_resume_equals_uninterrupted(tmp_path):
    root = shared("PF-WILLOW")
    common = ["--variant", "cpm", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root), "--split", "test",
              "--quiet", "--set", "save_every=3", "--set", "val_limit=2"]
    assert train_cli(common + ["--max-steps", "6", "--out", str(tmp_path / "full")]) == 0
    assert train_cli(common + ["--max-steps", "3", "--out", str(tmp_path / "part")]) == 0
    assert train_cli(common + ["--max-steps", "6", "--out", str(tmp_path / "part")]) == 2  # exists: needs --resume
    assert train_cli(common + ["--max-steps", "6", "--out", str(tmp_path / "part"), "--resume"]) == 0
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with open(tmp_path / "part" / "train_log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]


def test_training_validation_selects_best(tmp_path):
    from loaders.testing import write_pfpascal_root

    write_pfpascal_root(tmp_path / "pascal", n_pairs=6)
    out = tmp_path / "o"
    assert train_cli(["--variant", "class", "--preset", "tiny", "--dataset", "pf-pascal", "--data-root", str(tmp_path / "pascal"),
                      "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    with open(out / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    vals = [float(r["val_pck"]) for r in rows if r["val_pck"]]
    assert len(vals) == 2 and all(0 <= v <= 1 for v in vals)
    meta = ckpt.read(out / "best.safetensors")[1]
    assert meta["variant"] == "class" and "aeroplane" in meta["categories"]


# ----------------------------------------------------------------------------- checkpoints: bad input
def _save(tmp_path, variant, width=16, cats=("car",)):
    m = build_prompt(variant, width, cats, dino_dim=32, n_patches=16)
    path = tmp_path / f"{variant}-{width}.safetensors"
    ckpt.save(m, path, variant=variant, text_width=width, categories=cats if variant == "class" else [],
              dino_dim=32 if variant == "cpm" else 0, n_patches=16 if variant == "cpm" else 0)
    return path


def test_checkpoint_errors(tmp_path):
    p = _save(tmp_path, "single")
    with pytest.raises(MatcherError, match=r"single-16.safetensors: holds 'single' prompts, but the matcher is 'cpm'"):
        ckpt.load(p, variant="cpm", text_width=16)
    with pytest.raises(MatcherError, match=r"prompts have width 16, this Stable Diffusion's text encoder has 1024"):
        ckpt.load(p, variant="single", text_width=1024)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(MatcherError, match="corrupt.safetensors: not a readable safetensors checkpoint"):
        ckpt.load(bad, variant="single", text_width=16)
    with pytest.raises(MatcherError, match="checkpoint not found"):
        ckpt.load(tmp_path / "nope.safetensors", variant="single", text_width=16)


def test_category_without_class_prompt(tmp_path):
    root = shared("PF-WILLOW")
    import loaders
    from sd4match.methods.sd4match import ClassMatcher

    p = _save(tmp_path, "class", cats=("car", "motorbike", "bottle"))  # no 'bird' for duck
    table = loaders.load("pf-willow", root, "test")
    duck = [r for r in table.to_pylist() if r["category"] == "duck"][:1]
    m = ClassMatcher.from_settings("tiny", checkpoint=str(p))
    with pytest.raises(MatcherError, match="no class prompt for category 'duck'.*category_map=duck=CLASS"):
        m.predict([Pair(duck[0], root)])
    wine = [r for r in table.to_pylist() if r["category"] == "winebottle"][:1]
    out = m.predict([Pair(wine[0], root)])  # winebottle -> bottle through the default map
    assert np.isfinite(out["nn"][0]).all()


def test_cli_cpm_with_checkpoint_and_wrong_variant(tmp_path, capsys):
    from benchmarks.run import main as run_cli
    from loaders.testing import write_pfwillow_root

    write_pfwillow_root(tmp_path / "w", subsets=("car(G)",), n_images=2)
    p = _save(tmp_path, "single")
    base = ["--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"), "--quiet"]
    assert run_cli(["--matcher", "single", "--checkpoint", str(p), "--out", str(tmp_path / "o1"), *base]) == 0
    assert run_cli(["--matcher", "cpm", "--checkpoint", str(p), "--out", str(tmp_path / "o2"), *base]) == 2
    assert "holds 'single' prompts, but the matcher is 'cpm'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- released-format conversion
def test_convert_released_layouts(tmp_path, capsys):
    torch.manual_seed(0)
    single = torch.randn(1, 77, 16)
    torch.save({"dataset": single}, tmp_path / "single.pth")
    assert convert_cli(["--variant", "single", "--input", str(tmp_path / "single.pth"), "--out", str(tmp_path / "s.safetensors")]) == 0
    mod, meta = ckpt.load(tmp_path / "s.safetensors", variant="single", text_width=16)
    torch.testing.assert_close(mod.tokens.data, single[0, 1:-1])

    cls = {"car": torch.randn(1, 77, 16), "bird": torch.randn(1, 77, 16)}
    torch.save(cls, tmp_path / "class.pth")
    assert convert_cli(["--variant", "class", "--input", str(tmp_path / "class.pth"), "--out", str(tmp_path / "c.safetensors")]) == 0
    mod, _ = ckpt.load(tmp_path / "c.safetensors", variant="class", text_width=16)
    torch.testing.assert_close(mod([ "bird"])[0], cls["bird"][0, 1:-1])

    ref = CPM(16, 32, 16)
    names = {"global_tokens": "prompt_global", "channel.weight": "fc_channel.weight", "channel.bias": "fc_channel.bias",
             "patch.weight": "fc_patch.weight", "patch.bias": "fc_patch.bias", "pos": "pos_embedding", "alpha": "alpha"}
    torch.save({names[k]: v for k, v in ref.state_dict().items()}, tmp_path / "cpm.pth")
    assert convert_cli(["--variant", "cpm", "--input", str(tmp_path / "cpm.pth"), "--out", str(tmp_path / "p.safetensors")]) == 0
    mod, _ = ckpt.load(tmp_path / "p.safetensors", variant="cpm", text_width=16, dino_dim=32, n_patches=16)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(mod.state_dict()[k], v)
    torch.save({"x": torch.randn(3, 3)}, tmp_path / "bad.pth")
    assert convert_cli(["--variant", "cpm", "--input", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "bad.pth: expected one 25 x D and two 50 x D tensors" in capsys.readouterr().err
    assert not (tmp_path / "b.safetensors").exists()
