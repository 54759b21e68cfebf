"""Faithfulness around the golden tests: old prompt files keep their meaning, precision is recorded,
per-member posterior sampling reuses the cached VAE posterior, CPU FLOP counts include attention."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from sd4match import checkpoint as ckpt
from sd4match.prompts import PromptEncoder, SinglePrompt

from .conftest import shared


def _old_meaning_context(text_encoder, tokenizer, tokens):
    """How this toolkit encoded prompts before prompt format 2: the learned rows replaced the
    token-embedding lookup, after which CLIP added its position embeddings to all 77 rows."""
    emb = text_encoder.get_input_embeddings()
    B = tokens.shape[0]
    rows = torch.cat([emb.weight[tokenizer.bos_token_id].expand(B, 1, -1), tokens,
                      emb.weight[tokenizer.eos_token_id].expand(B, 1, -1)], dim=1)
    ids = torch.full((B, 77), tokenizer.eos_token_id)
    ids[:, 0] = tokenizer.bos_token_id
    handle = emb.register_forward_hook(lambda m, i, o: rows)
    try:
        return text_encoder(input_ids=ids)[0]
    finally:
        handle.remove()


def test_format1_checkpoint_keeps_its_meaning(tmp_path):
    from safetensors.torch import save_file

    from sd4match.methods.sd4match import SingleMatcher

    m = SingleMatcher.from_settings("tiny")
    comps = m.sd.c
    prompt = SinglePrompt(16)
    prompt.tokens.data.normal_(0, 0.02)
    ckpt.save(prompt, tmp_path / "new.safetensors", variant="single", text_width=16)
    _, meta = ckpt.read(tmp_path / "new.safetensors")
    old_meta = {k: v for k, v in meta.items() if k != "prompt_format"}  # as written before format 2
    save_file({"tokens": prompt.tokens.data.clone()}, str(tmp_path / "old.safetensors"), metadata=old_meta)
    with torch.no_grad():
        want_old = _old_meaning_context(comps.text_encoder, comps.tokenizer, prompt.tokens.data[None])
        want_new = PromptEncoder(comps.text_encoder, comps.tokenizer)(prompt.tokens.data[None])
        assert not torch.allclose(want_old, want_new, atol=1e-4)  # the two meanings differ
        for name, want in (("old", want_old), ("new", want_new)):
            matcher = SingleMatcher.from_settings("tiny", checkpoint=str(tmp_path / f"{name}.safetensors"))
            if name == "old":
                with pytest.warns(UserWarning, match="prompt format 1"):
                    got = matcher._context(["car"])
            else:
                got = matcher._context(["car"])
            torch.testing.assert_close(got, want[0:1], rtol=1e-5, atol=1e-6)
            assert matcher.describe()["prompt_format"] == (1 if name == "old" else 2)


def test_format1_training_run_is_not_resumed(tmp_path):
    from safetensors.torch import save_file

    from sd4match.train import TrainConfig, Trainer, TrainError

    root = shared("PF-WILLOW")
    cfg = TrainConfig(variant="single", dataset="pf-willow", data_root=str(root), split="test", model_id="tiny",
                      dino_id="tiny", image_size=64, batch_size=2, val_split="")
    out = tmp_path / "run"
    tr = Trainer(cfg, out)
    tr.save()
    (out / "config.json").write_text(json.dumps(__import__("dataclasses").asdict(cfg)))
    last = tr.current_step_dir() / "last.safetensors"  # what --resume reads
    _, meta = ckpt.read(last)
    save_file({"tokens": tr.prompt.tokens.data.clone()}, str(last),
              metadata={k: v for k, v in meta.items() if k != "prompt_format"})
    with pytest.raises(TrainError, match="prompt format 1 .* cannot be resumed"):
        Trainer(cfg, out).resume()


def test_untrained_single_prompt_starts_from_text_embeddings():
    from sd4match.methods.sd4match import SingleMatcher

    m = SingleMatcher.from_settings("tiny")
    m._setup_prompt()
    rows = m._prompt(["car"])[0]
    emb = m.sd.c.text_encoder.get_input_embeddings().weight
    pos = m.sd.c.text_encoder.text_model.embeddings.position_embedding.weight if hasattr(
        m.sd.c.text_encoder, "text_model") else m.sd.c.text_encoder.embeddings.position_embedding.weight
    # each row minus its position embedding is one row of the token table
    dist = torch.cdist((rows - pos[1:76]).float(), emb.float())
    assert dist.min(dim=1).values.max().item() < 1e-3 < dist.max().item()  # cdist rounding; rows are ~0.1 apart


def test_per_member_posterior_runs_the_vae_once_per_image():
    from benchmarks.dense import ImageInfo
    from sd4match.methods.dift import DiftMatcher

    m = DiftMatcher.from_settings("tiny", ensemble=4)
    assert m.config.posterior == "per-member"
    calls = []
    handle = m.sd.c.vae.encoder.register_forward_hook(lambda mod, i, o: calls.append(i[0].shape[0]))
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    infos = [ImageInfo(None, f"img{i}", "car", 64, 64) for i in range(2)]
    seen = []
    default = m.sd.noise_source
    m.sd.noise_source = lambda *a: seen.append(a[3:]) or default(*a)
    with torch.no_grad():
        first = m.extract(images, infos)
        again = m.extract(images, infos)  # posterior cached: no second VAE pass
    handle.remove()
    assert calls == [1, 1]  # one encoder pass per image (each its own call: batch-invariant), none again
    assert seen == [(4, 4), (4, 4)]  # 4 noise draws and 4 posterior samples per image
    torch.testing.assert_close(first, again)


def test_dtype_auto_resolves_to_the_authors_precision():
    from sd4match.methods.dift import DiftMatcher
    from sd4match.methods.sd4match import CPMMatcher

    assert DiftMatcher.from_settings("tiny").config.dtype == "float32"
    assert CPMMatcher.from_settings("tiny").config.dtype == "float32"  # on the CPU
    assert (DiftMatcher.gpu_dtype, CPMMatcher.gpu_dtype) == ("float32", "float16-autocast")


@pytest.mark.parametrize("name,want,weights", [("dift", "float32", torch.float32),
                                               ("single", "float16-autocast", torch.float32),
                                               ("cpm", "float16-autocast", torch.float32),
                                               ("geoaware-zs", "float32", torch.float32)])
def test_dtype_auto_on_a_cuda_device_without_a_gpu(monkeypatch, name, want, weights):
    """``--dtype auto --device cuda`` resolves before any model loads: DIFT float32 (its authors'),
    SD4Match float16 *autocast* (weights kept in float32, as SD4Match's test script runs), recorded
    as such; CUDA is faked, nothing runs on it."""
    from benchmarks import registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    m = registry.load_class(name).from_settings("tiny", device="cuda")
    assert m.config.dtype == want
    assert m.dtype == weights
    assert m.autocast == (torch.float16 if want.endswith("autocast") else None)
    assert m.describe()["precision"] == want
    # the resolved name is part of the feature hash: CPU float32 features are never reused for it
    cpu = registry.load_class(name).from_settings("tiny", device="cpu")
    assert cpu.config.dtype == "float32" and cpu.feature_hash != m.feature_hash


def test_autocast_runs_the_networks_in_half_precision_with_float32_weights():
    from benchmarks import registry

    m = registry.load_class("single").from_settings("tiny", dtype="bfloat16-autocast", ensemble=1)
    seen = []
    hook = m.sd.c.unet.conv_in.register_forward_hook(lambda mod, i, o: seen.append((mod.weight.dtype, o.dtype)))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        mean, std = m.sd.posterior(x * 2 - 1)
        m.sd.features(mean, std, torch.zeros(1, 77, m.sd.c.text_encoder.config.hidden_size), keys=["k"], t=50,
                      ensemble=1, seed=0)
    hook.remove()
    assert seen == [(torch.float32, torch.bfloat16)]
    assert m.describe()["precision"] == "bfloat16-autocast"
    m.close()


def test_precision_travels_with_results(tmp_path):
    from benchmarks.run import main as run_main
    from leaderboard.core import collect

    root = shared("PF-WILLOW")
    out = tmp_path / "run"
    assert run_main(["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                     "--limit", "2", "--out", str(out), "--dtype", "bfloat16", "--readout", "nn"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["precision"] == "bfloat16" and record["config"]["dtype"] == "bfloat16"
    with open(out / "results.csv") as fh:
        assert {r["precision"] for r in csv.DictReader(fh)} == {"bfloat16"}
    board = collect([out])
    assert set(board[board["kind"] == "measured"]["precision"]) == {"bfloat16"}
    assert "float16-autocast" in set(board[board["kind"] == "reported"]["precision"])


def test_precision_cli_prints_deviation(capsys):
    from sd4match.tools.precision import main

    assert main(["--model-id", "tiny", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("dift", "sd4match"))]
    names = ["float16", "float16-autocast", "bfloat16", "bfloat16-autocast"]
    assert [r[:2] for r in rows] == [[m, n] for m in ("dift", "sd4match") for n in names]
    dev = {(r[0], r[1]): float(r[2]) for r in rows}
    assert all(0 < v < 0.2 for v in dev.values())
    assert dev[("dift", "bfloat16")] > dev[("dift", "float16")]  # 8 mantissa bits against 11
    assert main(["--dtypes", "float8"]) == 2


def test_cpu_flop_count_includes_attention():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.flops import flop_counter

    q = torch.randn(2, 4, 64, 16)
    with flop_counter() as fc:
        F.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 2 * (2 * 2 * 4 * 64 * 64 * 16)  # QK^T and PV
    from sd4match.backbones.sd_models import load_components

    unet = load_components("tiny").unet
    args = (torch.randn(1, 4, 32, 32), torch.tensor([10]), torch.randn(1, 77, 16))
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        unet(*args)
    with torch.no_grad(), flop_counter() as full:
        unet(*args)
    assert full.get_total_flops() > plain.get_total_flops()


def test_image_key_is_pixel_content(tmp_path):
    """The same picture written twice with different PNG settings keeps its noise seed and cache key."""
    import numpy as np
    from PIL import Image

    from sd4match.methods.dift import DiftMatcher

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png", compress_level=1)
    img.save(tmp_path / "b.png", compress_level=9, pnginfo=__import__("PIL.PngImagePlugin").PngImagePlugin.PngInfo())
    img.save(tmp_path / "c.bmp")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    m = DiftMatcher.from_settings("tiny")
    keys = {m._decode(tmp_path / n)[1] for n in ("a.png", "b.png", "c.bmp")}
    assert len(keys) == 1
    img.putpixel((0, 0), (1, 2, 3))
    img.save(tmp_path / "d.png")
    assert m._decode(tmp_path / "d.png")[1] not in keys
