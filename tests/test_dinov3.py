"""The ``dinov3`` matcher: its image processor's arithmetic, its tokens (class and register tokens
dropped, final norm), the padded-frame mapping with 16-pixel patches on known transforms of real
images, weights errors, and a run on PF-Willow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import registry
from benchmarks.matchers.base import MatcherError
from sd4match.backbones.dinov3 import PATCH, dinov3_tokens, load_dinov3, processor_pixels

from .conftest import shared
from .test_zeroshot import _pck, _transformed_pairs, colour_cells


def _processor_or_skip():
    try:
        import torchvision  # noqa: F401 - the processor's backend
        from transformers import DINOv3ViTImageProcessor

        proc = DINOv3ViTImageProcessor()
        proc(Image.new("RGB", (20, 10)), return_tensors="pt")
    except Exception as exc:  # no torchvision, or one built for another torch
        pytest.skip(f"DINOv3ViTImageProcessor cannot run here ({type(exc).__name__}: {str(exc)[:80]}); "
                    "it needs a torchvision built for this torch")
    return proc


@pytest.mark.parametrize("name", ["Cars_006a.png", "Cars_007a.png"])
def test_preprocessing_equals_the_image_processor(name):
    proc = _processor_or_skip()
    with Image.open(shared("PF-WILLOW", "PF-dataset", "car(G)", name)) as im:
        rgb = im.convert("RGB")
        want = proc(rgb, return_tensors="pt")["pixel_values"][0]
    u8 = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    got = processor_pixels(u8, (224, 224))
    assert (got - want).abs().max() <= 1e-5


def test_processor_arithmetic_order_and_antialias():
    """Rescale, then an antialiased bilinear resize, then ImageNet normalisation: a downscale of a
    one-pixel checkerboard averages it (antialias) instead of sampling it."""
    board = (torch.arange(64)[None, :] + torch.arange(64)[:, None]) % 2 * 255
    u8 = board.expand(3, 64, 64).to(torch.uint8)
    out = processor_pixels(u8, (16, 16))
    grey = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out.mean((1, 2)), grey, atol=1e-3) and out.std((1, 2)).max() < 0.05


@pytest.mark.parametrize("src_hw,dst_hw", [((61, 47), (17, 23)), ((50, 64), (31, 27)), ((40, 40), (29, 29))])
def test_processor_resize_equals_pillows_antialiased_bilinear(src_hw, dst_hw):
    """An independent computation that antialiasing changes: a high-frequency random image downscaled
    at non-integer ratios equals Pillow's bilinear reduction (a triangle filter widened by the ratio,
    computed in float32 mode 'F' per channel), and is far from the same resize without antialias."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(sum(src_hw) * 7 + sum(dst_hw))
    u8 = torch.randint(0, 256, (3, *src_hw), generator=g, dtype=torch.uint8)
    out = processor_pixels(u8, dst_hw)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    got = out * std[:, None, None] + mean[:, None, None]  # back to [0, 1] before normalisation
    want = torch.stack([torch.from_numpy(np.array(
        Image.fromarray(c.numpy().astype(np.float32) / 255.0, mode="F").resize(dst_hw[::-1], Image.BILINEAR)))
        for c in u8])
    assert (got - want).abs().max() <= 1e-4
    plain = F.interpolate(u8[None].float() / 255, size=dst_hw, mode="bilinear", align_corners=False)[0]
    assert (plain - want).abs().max() > 0.05  # without antialias the test would fail


def test_tokens_drop_class_and_registers_and_use_the_final_norm():
    model = load_dinov3("tiny", 0)
    assert model.config.patch_size == PATCH and model.config.num_register_tokens == 4
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    last = dinov3_tokens(model, x)
    assert last.shape == (2, (112 // 16) ** 2, 32)
    torch.testing.assert_close(last, out.last_hidden_state[:, 5:], rtol=0, atol=0)
    raw = dinov3_tokens(model, x, layer=0, final_norm=False)
    torch.testing.assert_close(raw, out.hidden_states[1][:, 5:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer must be in"):
        dinov3_tokens(model, x, layer=2)


def test_dinov3_frame_mapping_on_known_transforms(tmp_path, monkeypatch):
    """The whole mapping at 16-pixel patches (frame, source cell, readout, centre 16u + 7.5, back to
    pixels) with weight-free colour descriptors in place of the network."""
    from sd4match.methods.dinov3 import Dinov3Matcher

    monkeypatch.setattr(Dinov3Matcher, "load_backbone", lambda self: torch.nn.Linear(1, 1))
    monkeypatch.setattr(Dinov3Matcher, "backbone_tokens",
                        lambda self, px: colour_cells(px, px.shape[-1] // 16).flatten(2).transpose(1, 2))
    pairs, gts = _transformed_pairs(tmp_path)
    m = registry.load_class("dinov3").from_settings(None, image_size=768, dino_id="tiny")  # 48 x 48 cells
    preds = m.predict(pairs)["nn"]
    assert _pck(pairs, gts, preds) >= 0.9
    err = np.concatenate([(pr - g) * 768 / max(p.trg_size) for p, g, pr in zip(pairs, gts, preds)])
    good = np.linalg.norm(err, axis=1) < 32
    assert (np.abs(np.median(err[good], axis=0)) < 16 / 6).all(), np.median(err[good], 0)
    assert _pck(pairs, gts, [pr[:, ::-1] for pr in preds]) < 0.5


def test_settings_and_weights_errors(tmp_path):
    from benchmarks.matchers.base import ConfigError

    cls = registry.load_class("dinov3")
    with pytest.raises(ConfigError, match="multiple of the backbone's 16-pixel patch"):
        cls.from_settings("tiny", image_size=840)
    with pytest.raises(MatcherError, match="no such DINOv3 model folder; the DINOv3 weights are gated"):
        load_dinov3(str(tmp_path / "missing"))
    with pytest.raises(MatcherError, match="accept the licence"):
        load_dinov3(str(tmp_path))  # a folder without weights


def test_dinov3_tiny_runs_on_pf_willow(tmp_path):
    import json

    from benchmarks.run import main as run_cli

    root = shared("PF-WILLOW")
    assert run_cli(["--matcher", "dinov3", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                    "--limit", "30", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["provenance"]["label"] == "dinov3 (preset tiny; random weights: tiny)"
    assert record["config"]["image_size"] == 112 and record["matcher_info"]["dino_pos"] == "rope"
