"""Stable Diffusion feature extraction with the tiny in-code stack (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.matchers.base import ConfigError, MatcherError
from benchmarks.run import main as run_cli
from loaders.testing import write_pfwillow_root
from sd4match.backbones.sd import SDFeaturizer
from sd4match.backbones.sd_models import SD21_HUB_ID, how_to, load_components
from sd4match.backbones.tiny_sd import tiny_tokenizer


@pytest.fixture(scope="module")
def comps():
    return load_components("tiny", seed=0)


def test_truncated_unet_equals_full_forward_capture(comps):
    sd = SDFeaturizer(comps, up_block=1)
    torch.manual_seed(0)
    noisy = torch.randn(2, 4, 32, 32)
    t = torch.tensor([261, 261])
    ctx = sd.encode_text(["a photo of a cat", "a photo of a dog"])
    truncated = sd.unet_features(noisy, t, ctx)
    sd.close()
    captured, later = {}, []
    h1 = comps.unet.up_blocks[1].register_forward_hook(lambda m, i, o: captured.setdefault("f", o))
    h2 = comps.unet.up_blocks[2].register_forward_hook(lambda m, i, o: later.append(1))
    with torch.no_grad():
        full = comps.unet(noisy, t, encoder_hidden_states=ctx).sample
    h1.remove()
    h2.remove()
    assert full.shape == (2, 4, 32, 32) and later == [1]
    torch.testing.assert_close(truncated, captured["f"], rtol=0, atol=0)
    assert truncated.shape == (2, 16, 32, 32)


def test_truncated_forward_stops_early(comps):
    sd = SDFeaturizer(comps, up_block=1)
    ran = []
    h = comps.unet.up_blocks[2].register_forward_hook(lambda m, i, o: ran.append(1))
    sd.unet_features(torch.randn(1, 4, 32, 32), torch.tensor([50]), sd.encode_text(["x"]))
    h.remove()
    sd.close()
    assert ran == []


def test_text_context_and_direct_embeddings(comps):
    sd = SDFeaturizer(comps)
    ctx = sd.encode_text(["a photo of a cat"])
    assert ctx.shape == (1, 77, 16)
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    mean, std = sd.posterior(img)
    f_text = sd.features(mean, std, ctx, keys=["k"], t=261, ensemble=2, seed=0)
    f_learned = sd.features(mean, std, torch.randn(1, 77, 16), keys=["k"], t=261, ensemble=2, seed=0)
    assert f_text.shape == (1, 16, 32, 32) and not torch.equal(f_text, f_learned)
    again = sd.features(mean, std, ctx, keys=["k"], t=261, ensemble=2, seed=0)
    assert torch.equal(f_text, again)
    assert not torch.equal(f_text, sd.features(mean, std, ctx, keys=["k"], t=261, ensemble=2, seed=1))
    # the ensemble averages members: ensemble 1 differs from ensemble 2
    assert not torch.equal(f_text, sd.features(mean, std, ctx, keys=["k"], t=261, ensemble=1, seed=0))
    sd.close()


def test_noise_independent_of_batch_composition(comps):
    sd = SDFeaturizer(comps)
    img = torch.rand(2, 3, 64, 64) * 2 - 1
    mean, std = sd.posterior(img)
    ctx = sd.encode_text(["a", "b"])
    both = sd.features(mean, std, ctx, keys=["k0", "k1"], t=261, ensemble=2, seed=0)
    one = sd.features(mean[1:], std[1:], ctx[1:], keys=["k1"], t=261, ensemble=2, seed=0)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-6)
    sd.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs(dtype):
    comps = load_components("tiny", seed=0)
    sd = SDFeaturizer(comps, dtype=dtype)
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    mean, std = sd.posterior(img.to(dtype))
    f = sd.features(mean, std, sd.encode_text(["x"]), keys=["k"], t=50, ensemble=2, seed=0)
    assert f.dtype == torch.float32 and torch.isfinite(f).all()
    sd.close()


def test_tokenizer_written_by_code():
    tok = tiny_tokenizer()
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids


def test_unreachable_model_id_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MatcherError) as info:
        load_components("nobody-here/not-a-model")
    msg = str(info.value)
    assert "'nobody-here/not-a-model' is not in the local Hugging Face cache" in msg and "--model-id" in msg
    assert "taken down" not in msg and "stabilityai" not in msg  # another id's message names only that id
    assert "\n" not in msg
    with pytest.raises(MatcherError) as info:
        load_components(SD21_HUB_ID)
    assert "taken down" in str(info.value) and "unofficial community mirror" in str(info.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    import urllib.error
    import urllib.request

    def refuse(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    from sd4match.backbones.sd_models import _probe_hub

    with pytest.raises(MatcherError, match="cannot reach .* for 'org/model' .*Name or service not known.*--model-id"):
        _probe_hub("org/model")


def test_local_folder_missing_component(tmp_path):
    for c in ("vae", "unet"):
        (tmp_path / c).mkdir()
    with pytest.raises(MatcherError, match=r"lacks component folder\(s\) text_encoder, tokenizer, scheduler"):
        load_components(str(tmp_path))
    with pytest.raises(MatcherError, match="no such model folder"):
        load_components(str(tmp_path / "nope"))
    assert "--model-id" in how_to(str(tmp_path))


def _run(tmp_path, *extra):
    write_pfwillow_root(tmp_path / "w", subsets=("car(G)",), n_images=3)
    return run_cli(["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o"), "--quiet", *extra])


def test_cli_bad_inputs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _run(tmp_path, "--model-id", str(tmp_path / "missing-model")) == 2
    assert "no such model folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _run(tmp_path, "--device", "cuda") == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err
    assert _run(tmp_path, "--batch-size", "-1") == 2
    assert "batch_size must be a positive integer or 'auto', got -1" in capsys.readouterr().err
    assert _run(tmp_path, "--dtype", "float8") == 2
    assert "unknown dtype 'float8'" in capsys.readouterr().err
    assert _run(tmp_path, "--readout", "best") == 2
    assert "unknown readout 'best'" in capsys.readouterr().err
    bad = tmp_path / "w" / "PF-dataset" / "car(G)" / "img_001.png"
    bad.write_bytes(b"\x89PNG broken")
    # the loader reads image headers for sizes, so a broken image is reported before any model runs
    assert run_cli(["--matcher", "dift", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"),
                    "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "img_001.png" in err and err.count("\n") == 1


def test_undecodable_image_in_matcher(tmp_path):
    from benchmarks.matchers.patch import PatchMatcher

    p = tmp_path / "x.jpg"
    p.write_bytes(b"not an image")
    m = PatchMatcher.from_settings("tiny")
    with pytest.raises(MatcherError, match="x.jpg: cannot decode image"):
        m.load_image(p)
    with pytest.raises(MatcherError, match="y.jpg: image file is missing"):
        m.load_image(tmp_path / "y.jpg")


def test_cache_resume_and_identical_predictions(tmp_path):
    cache = tmp_path / "cache"
    assert _run(tmp_path, "--cache-dir", str(cache)) == 0
    import json

    import pyarrow.parquet as pq

    first = pq.read_table(tmp_path / "o" / "predictions.parquet")
    info = json.loads((tmp_path / "o" / "run.json").read_text())["matcher_info"]
    assert info["extracted"] == 3 and info["cache_hits"] == 0
    assert len(list((cache / "dift").rglob("*.pt"))) == 3 and len(list((cache / "vae").rglob("*.pt"))) == 3
    assert _run(tmp_path, "--cache-dir", str(cache), "--overwrite") == 0  # a finished run is replaced only when asked
    info = json.loads((tmp_path / "o" / "run.json").read_text())["matcher_info"]
    assert info["extracted"] == 0 and info["cache_hits"] == 3
    assert pq.read_table(tmp_path / "o" / "predictions.parquet").equals(first)


def test_bad_settings():
    from sd4match.methods.dift import DiftMatcher

    with pytest.raises(ConfigError, match="ensemble >= 1.*ensemble=0"):
        DiftMatcher.from_settings("tiny", ensemble=0)
    m = DiftMatcher.from_settings("tiny", seed=3)
    assert m.config.seed == 3 and m.config.model_id == "tiny" and m.config.t == 261
    d = DiftMatcher.Config()
    assert (d.t, d.up_block, d.ensemble, d.image_size) == (261, 1, 8, 768)
    assert np.isclose(d.temperature, 0.04)


def test_compiled_unet_blocks_match_eager():
    """``--set compile=true``: the truncated UNet under torch.compile gives the eager features. A run
    pads every batch to the compiled batch (one static graph per run), so one graph is compiled here,
    as in a run: a partial batch is padded, the padding dropped."""
    eager = SDFeaturizer(load_components("tiny", seed=0))
    compiled = SDFeaturizer(load_components("tiny", seed=0), compile=True)
    torch.manual_seed(0)
    noisy, t = torch.randn(2, 4, 32, 32), torch.tensor([261, 261])
    ctx = eager.encode_text(["a photo of a cat", "a photo of a dog"])
    ref = eager.unet_features(noisy, t, ctx)
    sizes = []
    hook = compiled.c.unet.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    compiled.pad_to = 5
    out = compiled.unet_features(noisy, t, ctx)
    assert sizes == [5] and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    again = compiled.unet_features(noisy[:1], t[:1], ctx[:1])  # another partial batch: the same graph
    assert sizes == [5, 5]
    torch.testing.assert_close(again, ref[:1], rtol=1e-4, atol=1e-5)
    with compiled.eager():  # FLOP counting and batch probes: eager, unpadded
        torch.testing.assert_close(compiled.unet_features(noisy, t, ctx), ref, rtol=1e-4, atol=1e-5)
    assert sizes == [5, 5, 2]
    hook.remove()


def test_attention_backend_setting(comps):
    """``--set attention=...`` forces one SDPA backend; ``auto`` leaves the choice to PyTorch."""
    from sd4match.methods.dift import DiftMatcher

    torch.manual_seed(0)
    noisy, t = torch.randn(2, 4, 32, 32), torch.tensor([261, 261])
    sd = SDFeaturizer(comps)
    ctx = sd.encode_text(["a photo of a cat", "a photo of a dog"])
    ref = sd.unet_features(noisy, t, ctx)
    sd.close()
    sd = SDFeaturizer(comps, attention="math")
    torch.testing.assert_close(sd.unet_features(noisy, t, ctx), ref, rtol=1e-4, atol=1e-5)
    sd.close()
    sd = SDFeaturizer(comps, attention="cudnn")  # forced: no cuDNN kernel on the CPU, so it must fail
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):
        sd.unet_features(noisy, t, ctx)
    sd.close()
    with pytest.raises(ValueError, match="attention must be one of auto, flash"):
        SDFeaturizer(comps, attention="fast")
    with pytest.raises(ConfigError, match="attention must be one of"):
        DiftMatcher.from_settings("tiny", attention="fast")


def test_gpu_check_without_gpu_is_one_line():
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: gpu_check would run")
    res = subprocess.run([sys.executable, "-m", "sd4match.tools.gpu_check"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: sd4match.tools.gpu_check needs a CUDA GPU")
    assert res.stderr.strip().count("\n") == 0


def test_model_loading_is_announced(capsys):
    from sd4match.methods.dift import DiftMatcher

    m = DiftMatcher.from_settings("tiny")
    m.sd  # noqa: B018 - loads the model
    assert "loading Stable Diffusion from tiny ..." in capsys.readouterr().err
