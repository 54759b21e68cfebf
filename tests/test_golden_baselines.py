"""The zero-shot baselines (dinov2, sd-dino, geoaware-zs), ODISE's captioner and SD4Match-CPM's
DINOv2 branch against the outputs of the authors' pipelines in ``../shared/golden/{baselines,
captioner,sd4match-dino}`` (their READMEs give the conventions and tolerances used here).

Everything is read from the fixtures' own descriptions (pair, images, seeds, PCA dimensions), the
recorded random draws (shared noise, PCA range-finder matrices) are replayed into the toolkit's
pipeline, and the toolkit computes every stage with its own matchers, so another fixture set made
by the same generators is checked the same way. Where a fix changed a default, a contrast check
shows that the previous behaviour is outside the tolerance (the test can tell them apart).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks import registry
from benchmarks.dense import ImageInfo
from benchmarks.matchers.base import Pair

from .conftest import shared
from .test_golden import assert_rel, golden

SD_REL = 2e-5  # SD layers and latents (baselines README)
PCA_REL = 1e-4  # joint-PCA descriptor
CELLS = 2e-4  # GeoAware's window soft-argmax, grid cells
LAYERS = ("s5", "s4", "s3")


# ----------------------------------------------------------------------------------------------- inputs
@pytest.fixture(scope="module")
def inputs() -> dict:
    return json.loads(golden("baselines", "inputs.json").read_text())


@pytest.fixture(scope="module")
def draws() -> dict:
    return load_file(str(golden("baselines", "draws.safetensors")))


def _image(rel: str) -> tuple[torch.Tensor, ImageInfo]:
    from PIL import Image

    path = shared("PF-WILLOW", *Path(rel).parts)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    key = hashlib.sha256(f"golden|{rel}".encode()).hexdigest()
    return x, ImageInfo(path, key, Path(rel).parent.name.split("(")[0], rgb.size[0], rgb.size[1])


@pytest.fixture(scope="module")
def images(inputs) -> dict[str, tuple[torch.Tensor, ImageInfo]]:
    return {"src": _image(inputs["src_image"]), "trg": _image(inputs["trg_image"])}


@pytest.fixture(scope="module")
def pair(inputs) -> Pair:
    import loaders

    root = shared("PF-WILLOW")
    table = loaders.load("pf-willow", root, "test")
    rows = [r for r in table.to_pylist() if r["pair_id"] == inputs["pair_id"]]
    assert len(rows) == 1, f"pair {inputs['pair_id']} not in the PF-Willow table"
    return Pair(rows[0], root)


def _matcher(name: str, inputs: dict, draws: dict, **settings):
    """A matcher on the fixture's weights, with the recorded shared noise replayed."""
    base = {"dino_id": str(golden("baselines", "dinov2")), "seed": int(inputs["noise_seed"])}
    if name != "dinov2":
        base["model_id"] = str(golden("baselines", "sd15-stack"))
    if name == "sd-dino":
        base["pca_dims"] = ",".join(str(d) for d in inputs["pca_dims"])
    m = registry.load_class(name).from_settings(None, **{**base, **settings})
    if name != "dinov2":
        noise = draws["noise"]

        def recorded(h, w):
            assert (h, w) == tuple(noise.shape[-2:]), f"latent {h} x {w}, recorded noise {tuple(noise.shape)}"
            return noise.clone()

        m._noise = recorded
    return m


@contextlib.contextmanager
def replay_pca(draws: dict, monkeypatch):
    """``torch.pca_lowrank``'s range finder draws one ``randn(n_features, q)`` per call: hand it the
    recorded matrices, in the order s5, s4, s3 (other draws are untouched)."""
    queue = [draws[f"pca_R_{k}"] for k in LAYERS]
    original = torch.randn

    def randn(*size, **kw):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        if queue and shape == tuple(queue[0].shape) and kw.get("generator") is None:
            return queue.pop(0).to(dtype=kw.get("dtype") or torch.float32, device=kw.get("device") or "cpu").clone()
        return original(*size, **kw)

    monkeypatch.setattr(torch, "randn", randn)
    try:
        yield queue
    finally:
        monkeypatch.setattr(torch, "randn", original)


def _to_840(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from sd4match.methods.frame_geometry import to_frame

    return to_frame(pred, *size, 840)


# ----------------------------------------------------------------------------------------------- frames
def test_canvases_are_the_authors(inputs, images):
    from sd4match.methods.frame_geometry import square_canvas

    for side in ("src", "trg"):
        for S in (840, 960):
            u8 = (square_canvas(images[side][0], S) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
            assert hashlib.sha256(u8.numpy().tobytes()).hexdigest() == inputs["canvas_sha256"][f"{side}_{S}"], (side, S)


# ----------------------------------------------------------------------------------------------- DINOv2
def test_dinov2_tokens_at_840(inputs, draws, images):
    ref = load_file(str(golden("baselines", "dinov2.safetensors")))
    m = _matcher("dinov2", inputs, draws)
    assert m.config.dino_pos == "hub"
    for side in ("src", "trg"):
        x, info = images[side]
        assert_rel(m.dino_maps([x], [info])[0], ref[f"{side}_dino_tokens"], what=f"{side} DINOv2 tokens (840)")
    # transformers' own position rule is what this default fixes: it must be told apart
    other = _matcher("dinov2", inputs, draws, dino_pos="transformers")
    x, info = images["src"]
    got, want = other.dino_maps([x], [info])[0], ref["src_dino_tokens"]
    assert (got - want).abs().max() / want.abs().max() > 100 * 1e-5


def test_dinov2_predictions(inputs, draws, pair):
    ref = load_file(str(golden("baselines", "dinov2.safetensors")))
    m = _matcher("dinov2", inputs, draws)
    pred = _to_840(m.predict([pair])["nn"][0], pair.trg_size)
    np.testing.assert_allclose(pred, ref["dinov2_pred_840"].numpy(), atol=1e-3)  # argmax cells, exact
    np.testing.assert_allclose(pred, np.array(inputs["ref_pred_840"]["dinov2"]), atol=1e-3)


def test_sd4match_dino_branch_at_224(images):
    """CPM's DINOv2 tokens: preprocessing and ``last_hidden_state`` as transformers 4.36 computed them."""
    from sd4match.backbones.dino import DinoSpec, load_dino, preprocess

    ref = load_file(str(golden("sd4match-dino", "dino224.safetensors")))
    weights = str(golden("baselines", "dinov2"))
    m = registry.load_class("cpm").from_settings(None, model_id="tiny", dino_id=weights)
    model, spec = m.dino
    assert (spec.resize, spec.crop) == (256, 224)
    for side in ("src", "trg"):
        _, info = images[side]
        from PIL import Image

        with Image.open(info.path) as im:
            pixels = preprocess(im, DinoSpec())
        assert (pixels - ref[f"{side}_pixel_values"][0]).abs().max() <= 1e-6, f"{side} DINOv2 input"
        # the matcher's own path: per-image store, patch tokens (CLS dropped)
        assert_rel(m.dino_tokens([info])[0], ref[f"{side}_last_hidden_state"][0, 1:], what=f"{side} CPM DINOv2 tokens")
        with torch.no_grad():
            out = model(pixel_values=ref[f"{side}_pixel_values"])
        assert_rel(out.last_hidden_state, ref[f"{side}_last_hidden_state"], what=f"{side} last_hidden_state")
        assert_rel(out.pooler_output, ref[f"{side}_pooler_output"], what=f"{side} pooler_output")
    old, _ = load_dino(weights, 0, "transformers")
    with torch.no_grad():
        got = old(pixel_values=ref["trg_pixel_values"]).last_hidden_state
    want = ref["trg_last_hidden_state"]
    assert (got - want).abs().max() / want.abs().max() > 100 * 1e-5


# ----------------------------------------------------------------------------------------------- SD layers
@pytest.fixture(scope="module")
def sd_dino(inputs, draws):
    m = _matcher("sd-dino", inputs, draws)
    yield m
    m.close()


@pytest.fixture(scope="module")
def geoaware(inputs, draws):
    m = _matcher("geoaware-zs", inputs, draws)
    yield m
    m.close()


def _layers(m, images, side):
    x, info = images[side]
    return m.sd_layers([x], [info])[0]


def test_window_latents(sd_dino, images):
    from sd4match.methods.frame_geometry import square_canvas
    from sd4match.methods.sd_frame import window_offsets

    ref = load_file(str(golden("baselines", "sd_dino.safetensors")))
    cfg = sd_dino.config
    offs = window_offsets(cfg.sd_size, cfg.window)
    for side in ("src", "trg"):
        canvas = square_canvas(images[side][0], cfg.sd_size)
        crops = torch.stack([canvas[:, y:y + cfg.window, x:x + cfg.window] for y in offs for x in offs])
        mean, _ = sd_dino.sd.posterior(crops * 2 - 1)
        lat = mean * sd_dino.sd.c.vae.config.scaling_factor
        for k in range(len(crops)):
            assert_rel(lat[k], ref[f"{side}_latent_w{k}"], SD_REL, what=f"{side} window {k} latent")


@pytest.mark.parametrize("name,prefix,fixture,file", [("sd-dino", "sddino", "sd_dino", "sd_dino"),
                                                      ("geoaware-zs", "geoaware", "geoaware", "geoaware_zs")])
def test_sd_layers(name, prefix, fixture, file, images, request):
    """s5, s4, s3 assembled over the 960 frame: sd-dino at t = 100 without FreeU, geoaware-zs at
    t = 50 with GeoAware's FreeU channel rule (scaled in place, as the stored tensors are)."""
    m = request.getfixturevalue(fixture)
    ref = load_file(str(golden("baselines", f"{file}.safetensors")))
    for side in ("src", "trg"):
        for k, got in zip(LAYERS, _layers(m, images, side)):
            assert_rel(got, ref[f"{prefix}_{side}_{k}"], SD_REL, what=f"{name} {side} {k}")


def test_geoaware_freeu_rule_is_told_apart(inputs, draws, images):
    """diffusers' FreeU (by up-block index) instead of GeoAware's channel rule moves s4 and s3 far
    outside the tolerance (s5 is scaled alike by both)."""
    ref = load_file(str(golden("baselines", "geoaware_zs.safetensors")))
    m = _matcher("geoaware-zs", inputs, draws, freeu="diffusers")
    s5, s4, s3 = _layers(m, images, "src")
    assert_rel(s5, ref["geoaware_src_s5"], SD_REL, what="s5, diffusers' rule")
    for k, got in (("s4", s4), ("s3", s3)):
        want = ref[f"geoaware_src_{k}"]
        assert (got - want).abs().max() / want.abs().max() > 0.05, k
    m.close()


def _sign_aligned(a, b, ref_a, ref_b):
    """``a``, ``b`` (C, H, W) with each channel's sign set to agree with the reference's."""
    dot = (a.double() * ref_a.double()).sum(dim=(1, 2)) + (b.double() * ref_b.double()).sum(dim=(1, 2))
    sign = torch.where(dot < 0, -1.0, 1.0).to(a.dtype)[:, None, None]
    return a * sign, b * sign


def test_sign_alignment_undoes_flipped_components_only():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, 4, generator=g), torch.randn(6, 4, 4, generator=g)
    flip = torch.tensor([1.0, -1, 1, -1, -1, 1])[:, None, None]
    x, y = _sign_aligned(a * flip, b * flip, a, b)
    assert torch.equal(x, a) and torch.equal(y, b)
    x, _ = _sign_aligned(a.flip(0), b.flip(0), a, b)  # other components stay different: a wrong PCA still fails
    assert not torch.allclose(x, a)


def test_sd_dino_joint_pca_and_predictions(sd_dino, images, pair, draws, inputs, monkeypatch):
    from sd4match.methods.sd_dino import co_pca

    ref = load_file(str(golden("baselines", "sd_dino.safetensors")))
    dims = [int(d) for d in inputs["pca_dims"]]
    with replay_pca(draws, monkeypatch) as left:
        a, b = co_pca(_layers(sd_dino, images, "src"), _layers(sd_dino, images, "trg"), dims, "lowrank",
                      torch.Generator().manual_seed(int(inputs["pca_seed"])))
        assert not left, "the PCA did not draw the recorded matrices"
    # a principal direction's sign is arbitrary (it follows the SVD's threading): each component is
    # compared after aligning its sign with the reference's, the same sign for both images (joint PCA)
    a, b = _sign_aligned(a, b, ref["sddino_src_copca"], ref["sddino_trg_copca"])
    assert_rel(a, ref["sddino_src_copca"], PCA_REL, what="source joint-PCA descriptor")
    assert_rel(b, ref["sddino_trg_copca"], PCA_REL, what="target joint-PCA descriptor")
    with replay_pca(draws, monkeypatch):
        pred = _to_840(sd_dino.predict([pair])["nn"][0], pair.trg_size)
    want = ref["sddino_pred_840"].numpy()
    sure = ref["sddino_top2_gap"].numpy() >= 1e-5  # near-ties are excepted (README)
    assert sure.sum() >= len(sure) // 2
    np.testing.assert_allclose(pred[sure], want[sure], atol=1e-3)


def test_geoaware_predictions(geoaware, pair, inputs):
    ref = load_file(str(golden("baselines", "geoaware_zs.safetensors")))
    pred = _to_840(geoaware.predict([pair])["geoaware-soft-argmax"][0], pair.trg_size)
    grid = (pred - geoaware.config.centre) / 14  # patch centres: pixel = 14 u + 7
    err = np.abs(grid - ref["geoaware_grid"].numpy()).max()
    assert err <= CELLS, f"GeoAware window soft-argmax: {err:.3g} cells from the reference"
    np.testing.assert_allclose(pred, np.array(inputs["ref_pred_840"]["geoaware-zs"]), atol=14 * CELLS)


# ----------------------------------------------------------------------------------------------- ODISE's captioner
@pytest.fixture(scope="module")
def cap_settings():
    return {"captioner": "odise", "captioner_ckpt": str(golden("captioner", "captioner.safetensors")),
            "clip_id": str(golden("captioner", "clip-vision"))}


@pytest.fixture(scope="module")
def sd_dino_cap(inputs, draws, cap_settings):
    m = _matcher("sd-dino", inputs, draws, **cap_settings)
    yield m
    m.close()


def _windows(m, x):
    from sd4match.methods.frame_geometry import square_canvas
    from sd4match.methods.sd_frame import window_offsets

    cfg = m.config
    offs = window_offsets(cfg.sd_size, cfg.window)
    canvas = square_canvas(x, cfg.sd_size)
    return torch.stack([canvas[:, y:y + cfg.window, xx:xx + cfg.window] for y in offs for xx in offs])


def test_captioner_input_embedding_context_and_time(sd_dino_cap, images):
    ref = load_file(str(golden("captioner", "captioner_sd_dino.safetensors")))
    cap = sd_dino_cap.captioner
    empty = sd_dino_cap._context("car")  # prompt "": the empty-prompt embedding
    assert_rel(empty, ref["context_empty_prompt"], what="empty-prompt context")
    unet = sd_dino_cap.sd.c.unet
    t = torch.tensor([sd_dino_cap.config.t])
    with torch.no_grad():
        plain = unet.time_embedding(unet.time_proj(t))[0]
    assert_rel(plain, ref[f"time_embed_t{int(t)}_no_captioner"], what="time embedding without the captioner")
    checked = 0
    for side in ("src", "trg"):
        wins = _windows(sd_dino_cap, images[side][0])
        with torch.no_grad():
            pixels = cap.clip_input(wins)
            embed = cap.embed(wins)
            ctx, cond = cap(wins, empty)
        for k in range(len(wins)):
            if f"{side}_clip_input_w{k}" in ref:
                assert (pixels[k] - ref[f"{side}_clip_input_w{k}"]).abs().max() <= 1e-5, f"{side} w{k} CLIP input"
                checked += 1
            assert_rel(embed[k], ref[f"{side}_clip_image_embed_w{k}"], what=f"{side} w{k} CLIP image embedding")
            # the projection itself, at the fixture's stated tolerance (rtol 1e-5)
            assert_rel(cap.prefix_embed(embed[k:k + 1])[0], ref[f"{side}_prefix_embed_w{k}"],
                       what=f"{side} w{k} prefix embedding")
            assert_rel(ctx[k], ref[f"{side}_context_w{k}"], what=f"{side} w{k} context")
            assert_rel(cond[k], ref[f"{side}_cond_emb_w{k}"], what=f"{side} w{k} time-embedding addition")
            assert_rel(plain + cond[k], ref[f"{side}_time_embed_w{k}"], what=f"{side} w{k} time embedding")
    assert checked >= 1


def test_captioner_time_addition_is_what_the_resblocks_see(sd_dino_cap, images):
    """Second check of the time hook, inside the toolkit's own layer extraction: the time embedding
    every ResBlock receives (the ``temb`` of the first down block's first resnet, one per window) is
    the reference's time embedding with the captioner's addition."""
    ref = load_file(str(golden("captioner", "captioner_sd_dino.safetensors")))
    unet = sd_dino_cap.sd.c.unet
    seen = []

    def grab(module, args, kwargs):
        seen.append((args[1] if len(args) > 1 else kwargs["temb"]).detach().float().clone())

    sd_dino_cap.reset_caches()
    handle = unet.down_blocks[0].resnets[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _layers(sd_dino_cap, images, "trg")
    finally:
        handle.remove()
    temb = torch.cat(seen)
    n = sum(1 for k in ref if k.startswith("trg_time_embed_w"))
    assert len(temb) == n, f"{len(temb)} time embeddings seen for {n} windows"
    for k in range(n):
        assert_rel(temb[k], ref[f"trg_time_embed_w{k}"], what=f"trg w{k} time embedding seen by the ResBlocks")
    plain = ref[f"time_embed_t{int(sd_dino_cap.config.t)}_no_captioner"]
    assert (temb[0] - plain).abs().max() > 1e-3 * plain.abs().max()  # the addition is there (not a no-op)


@pytest.mark.parametrize("name,fixture_file,prefix", [("sd-dino", "captioner_sd_dino", "sddino_cap"),
                                                      ("geoaware-zs", "captioner_geoaware_zs", "geoaware_cap")])
def test_sd_layers_with_the_captioner(name, fixture_file, prefix, inputs, draws, cap_settings, images, sd_dino_cap):
    ref = load_file(str(golden("captioner", f"{fixture_file}.safetensors")))
    m = sd_dino_cap if name == "sd-dino" else _matcher(name, inputs, draws, **cap_settings)
    for side in ("src", "trg"):
        for k, got in zip(LAYERS, _layers(m, images, side)):
            assert_rel(got, ref[f"{prefix}_{side}_{k}"], SD_REL, what=f"{name} {side} {k} with the captioner")
    if m is not sd_dino_cap:
        m.close()
    # captioner=none is a different pipeline (11-21 % of the max apart): told apart
    off = load_file(str(golden("baselines", "sd_dino.safetensors")))["sddino_src_s3"]
    on = ref[f"{prefix}_src_s3"] if name == "sd-dino" else None
    if on is not None:
        assert (on - off).abs().max() / off.abs().max() > 0.05


def test_captioner_checkpoint_errors(tmp_path, cap_settings):
    from safetensors.torch import save_file

    from benchmarks.matchers.base import MatcherError
    from sd4match.backbones.captioner import load_captioner, read_captioner

    tensors = read_captioner(cap_settings["captioner_ckpt"])
    assert len(tensors) == 8
    # detectron2 layout: {"model": state dict, ...} in a torch.save file, read with weights_only
    wrapped = tmp_path / "odise.pth"
    torch.save({"model": {f"backbone.feature_extractor.{k}": v for k, v in tensors.items()}, "iteration": 5}, wrapped)
    assert all(torch.equal(read_captioner(str(wrapped))[k], v) for k, v in tensors.items())
    missing = dict(tensors)
    missing.pop("alpha_cond")
    save_file(missing, str(tmp_path / "partial.safetensors"))
    with pytest.raises(MatcherError, match="no tensor 'backbone.feature_extractor.alpha_cond'"):
        read_captioner(str(tmp_path / "partial.safetensors"))
    bad = dict(tensors)
    bad["alpha_cond"] = torch.full_like(bad["alpha_cond"], float("nan"))
    save_file(bad, str(tmp_path / "nan.safetensors"))
    with pytest.raises(MatcherError, match="finite"):
        read_captioner(str(tmp_path / "nan.safetensors"))
    wrong = dict(tensors)
    wrong["clip_project.linear.weight"] = torch.zeros(32, 7)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(MatcherError, match="has shape"):
        load_captioner(str(tmp_path / "wrong.safetensors"), cap_settings["clip_id"])
    (tmp_path / "evil.pth").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would call os.system
    with pytest.raises(MatcherError, match="cannot read the ODISE checkpoint"):
        read_captioner(str(tmp_path / "evil.pth"))
    with pytest.raises(MatcherError, match="no such CLIP model folder"):
        load_captioner(cap_settings["captioner_ckpt"], str(tmp_path / "no-clip"))


# ----------------------------------------------------------------------------------------------- the CLI
def _one_pair_root(tmp_path: Path, inputs: dict) -> Path:
    """A PF-Willow root that holds just the fixture's two images (and their keypoint files)."""
    root = tmp_path / "willow"
    for rel in (inputs["src_image"], inputs["trg_image"]):
        src = shared("PF-WILLOW", *Path(rel).parts)
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        shutil.copyfile(src.with_suffix(".mat"), dst.with_suffix(".mat"))
    return root


@pytest.mark.parametrize("name", ["dinov2", "sd-dino", "geoaware-zs"])
def test_cli_reproduces_the_reference_predictions(name, inputs, tmp_path):
    import pandas as pd

    from benchmarks.run import main as run_main

    root = _one_pair_root(tmp_path, inputs)
    out = tmp_path / "run"
    args = ["--matcher", name, "--dataset", "pf-willow", "--data-root", str(root), "--limit", "1", "--out", str(out),
            "--set", f"dino_id={golden('baselines', 'dinov2')}", "--set", f"seed={inputs['noise_seed']}"]
    if name != "dinov2":
        args += ["--set", f"model_id={golden('baselines', 'sd15-stack')}"]
    if name == "sd-dino":
        args += ["--set", "pca_dims=" + ",".join(str(d) for d in inputs["pca_dims"])]
    assert run_main(args) == 0
    preds = pd.read_parquet(out / "predictions.parquet")
    row = preds[preds["pair_id"] == inputs["pair_id"]].iloc[0]
    pred = _to_840(np.stack(row["pred_kps"]).astype(np.float64), tuple(inputs["trg_size_wh"]))
    want = np.array(inputs["ref_pred_840"][name], dtype=np.float64)
    if name == "geoaware-zs":
        assert np.abs(pred - want).max() / 14 <= CELLS
    else:
        np.testing.assert_allclose(pred, want, atol=1e-3)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["dino_pos"] == "hub"
    if name == "geoaware-zs":
        assert record["config"]["freeu"] == "geoaware"
    if name != "dinov2":
        assert record["config"]["captioner"] == "none"

