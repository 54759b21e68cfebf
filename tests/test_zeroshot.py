"""The padded-frame baselines (dinov2, sd-dino, geoaware-zs): frame geometry, the mapping back to
pixels on known transforms of real images, sliding windows, joint PCA, test-time options, the
GeoAware head file."""

from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks import registry
from benchmarks.matchers.base import MatcherError, Pair
from sd4match.methods import frame as FRAME
from sd4match.methods import frame_geometry, geoaware_head, sd_dino, sd_frame

from .conftest import shared
from .transforms import known_transform_pairs

#: the padded-frame family's public names, from the files that define them
Z = types.SimpleNamespace(**{k: v for m in (frame_geometry, FRAME, sd_frame, sd_dino, geoaware_head)
                             for k, v in vars(m).items() if not k.startswith("__")})


# ----------------------------------------------------------------------------------------------- frame
@pytest.mark.parametrize("W,H,S", [(500, 375, 840), (375, 500, 840), (300, 300, 840), (333, 500, 960), (7, 3, 14)])
def test_square_layout_and_round_trip(W, H, S):
    s, ox, oy, nw, nh = Z.square_layout(W, H, S)
    assert max(nw, nh) == S and abs(min(nw, nh) - S * min(W, H) / max(W, H)) <= 0.5
    assert (ox, oy) == ((S - nw) // 2, (S - nh) // 2)
    pts = np.array([[0.0, 0.0], [W - 1.0, H - 1.0], [W / 3, H / 7]])
    np.testing.assert_allclose(Z.from_frame(Z.to_frame(pts, W, H, S), W, H, S), pts, atol=1e-9)


def test_canvas_is_the_lanczos_resize_pasted_centred():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    img = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    canvas = (Z.square_canvas(img, 40) * 255).round().byte().permute(1, 2, 0).numpy()
    small = np.asarray(Image.fromarray(u8).resize((40, 24), Image.Resampling.LANCZOS))
    assert (canvas[:8] == 0).all() and (canvas[32:] == 0).all()
    np.testing.assert_array_equal(canvas[8:32], small)
    edge = (Z.square_canvas(img, 40, pad="edge") * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(edge[0], small[0])
    mirrored = Z.square_canvas(img, 40, flip=True)
    torch.testing.assert_close(mirrored, Z.square_canvas(img, 40).flip(-1))


def test_window_offsets_and_assembly():
    assert Z.window_offsets(960, 512) == [0, 448]
    assert Z.window_offsets(512, 512) == [0] and Z.window_offsets(960, 0) == [0]
    # a map that is a function of the absolute cell position survives cropping into windows and averaging
    full = torch.arange(60 * 60, dtype=torch.float32).reshape(1, 60, 60)
    offs = Z.window_offsets(960, 512)  # stride 16: windows of 32 cells at 0 and 28
    wins = torch.stack([full[:, y // 16:y // 16 + 32, x // 16:x // 16 + 32] for y in offs for x in offs])
    torch.testing.assert_close(Z._assemble(wins, offs, 512, 960), full)


def test_co_pca_keeps_pairwise_geometry():
    """Projecting both images on the joint principal directions of full rank keeps every distance."""
    g = torch.Generator().manual_seed(0)
    src = tuple(torch.randn(c, m, m, generator=g) for c, m in ((12, 2), (10, 4), (6, 8)))
    trg = tuple(torch.randn(c, m, m, generator=g) for c, m in ((12, 2), (10, 4), (6, 8)))
    a, b = Z.co_pca(src, trg, [8, 10, 6], "exact", torch.Generator().manual_seed(1))
    assert a.shape == b.shape == (6 + 10 + 8, 8, 8)
    x = torch.cat([src[2].reshape(6, -1), trg[2].reshape(6, -1)], 1).T  # s3 at full rank: distances kept
    y = torch.cat([a[:6].reshape(6, -1), b[:6].reshape(6, -1)], 1).T
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(x, x, compute_mode=exact), torch.cdist(y, y, compute_mode=exact),
                               rtol=1e-4, atol=1e-4)
    lo1 = Z.co_pca(src, trg, [4, 4, 4], "lowrank", torch.Generator().manual_seed(1))
    lo2 = Z.co_pca(src, trg, [4, 4, 4], "lowrank", torch.Generator().manual_seed(1))
    torch.testing.assert_close(lo1[0], lo2[0])  # seeded: repeatable


# ----------------------------------------------------------------------------------------------- weight-free stand-ins
def colour_cells(x: torch.Tensor, g: int, r: int = 4) -> torch.Tensor:
    """``(B, 3, S, S)`` -> ``(B, 3 (2r+1)^2, g, g)`` normalised colour neighbourhoods of the g x g cells."""
    cells = F.adaptive_avg_pool2d(x.float(), g)
    patches = F.unfold(F.pad(cells, (r,) * 4, mode="replicate"), 2 * r + 1)
    patches = F.normalize(patches - patches.mean(1, keepdim=True), dim=1)
    return patches.reshape(x.shape[0], -1, g, g)


class _Dino(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _fake_tokens(model, pixels, layer, norm):
    g = pixels.shape[-1] // 14
    return colour_cells(pixels, g).flatten(2).transpose(1, 2)


class _FakeSD:
    """Stands in for the SD featurizer: the 'latent' is the image pooled by 8, every layer a colour
    descriptor of the window at strides 64, 32 and 16 (so windows, averaging and grids all run)."""

    class c:  # noqa: N801 - mirrors SDFeaturizer.c
        class vae:  # noqa: N801
            class config:  # noqa: N801
                scaling_factor = 1.0

        class scheduler:  # noqa: N801
            @staticmethod
            def add_noise(lat, noise, t):
                return lat

    def posterior(self, x):
        lat = F.avg_pool2d(x.float(), 8)
        return torch.cat([lat, lat.mean(1, keepdim=True)], 1), None

    def encode_text(self, prompts):
        return torch.zeros(len(prompts), 77, 4)

    def layer_features(self, noisy, t, ctx, layers, time_add=None):
        img = noisy[:, :3]
        m = img.shape[-1]
        return [colour_cells(img, m // 8, 1), colour_cells(img, m // 4, 2), colour_cells(img, m // 2)]

    def close(self):
        pass


def _stand_ins(monkeypatch, matcher):
    monkeypatch.setattr(FRAME, "block_tokens", _fake_tokens)
    monkeypatch.setattr(FRAME, "load_dino", lambda model_id, seed=0, positions="hub": (_Dino(), None))
    if isinstance(matcher, Z.SDFrameMatcher):
        matcher._sd = _FakeSD()
    return matcher


SMALL = {"image_size": 672, "dino_id": "tiny"}  # 48 x 48 cells
SMALL_SD = {**SMALL, "model_id": "tiny", "sd_size": 768, "window": 512}  # s3: 48 x 48 cells, 2 x 2 windows


def _transformed_pairs(tmp_path, every=5):
    """Known transforms of real images (as for the dense base), with isotropic scalings: an aspect
    change is undone by the dense base's square resize but not by a padded frame, and colour
    descriptors do not survive it."""
    return known_transform_pairs(tmp_path, [(1.4, 1.4), (0.7, 0.7), (1.0, 1.0)], every)


def _pck(pairs, gts, preds, alpha=0.05):
    return np.concatenate([np.linalg.norm(pr - g, axis=1) <= alpha * max(p.trg_size)
                           for p, g, pr in zip(pairs, gts, preds)]).mean()


@pytest.mark.parametrize("name,settings", [
    ("dinov2", {**SMALL, "readout": "nn,geoaware-soft-argmax"}),
    ("sd-dino", {**SMALL_SD, "pca_dims": "16,16,16"}),
    ("geoaware-zs", {**SMALL_SD, "readout": "nn,geoaware-soft-argmax"}),
])
def test_geometry_known_transforms(name, settings, tmp_path, monkeypatch):
    """Each matcher's whole mapping (padded frames at both sizes, source cell, windows, readouts,
    cell centres, back to pixels) with weight-free colour descriptors in place of the networks:
    PCK@0.05 >= 0.9 on known crops/scalings of real images, no bias beyond a sixth of a cell (a
    half-cell slip in the centre or the padding offset would fail it), and an x/y swap fails."""
    pairs, gts = _transformed_pairs(tmp_path)
    assert len(pairs) >= 15
    m = _stand_ins(monkeypatch, registry.load_class(name).from_settings(None, **settings))
    out = m.predict(pairs)
    for readout, preds in out.items():
        assert _pck(pairs, gts, preds) >= 0.9, f"{name} {readout}: PCK@0.05 {_pck(pairs, gts, preds):.3f}"
        err = np.concatenate([(pr - g) * 672 / max(p.trg_size) for p, g, pr in zip(pairs, gts, preds)])  # frame px
        good = np.linalg.norm(err, axis=1) < 28
        assert (np.abs(np.median(err[good], axis=0)) < 14 / 6).all(), f"{name} {readout}: bias {np.median(err[good], 0)}"
    assert _pck(pairs, gts, [pr[:, ::-1] for pr in next(iter(out.values()))]) < 0.5
    # the centre setting moves every prediction by its difference, in frame pixels
    m2 = _stand_ins(monkeypatch, registry.load_class(name).from_settings(None, **settings, centre=m.config.centre + 3.5))
    shift = [b - a for a, b in zip(next(iter(out.values())), next(iter(m2.predict(pairs).values())))]
    for p, d in zip(pairs, shift):
        np.testing.assert_allclose(d, 3.5 / (672 / max(p.trg_size)), rtol=1e-4)


def test_adaptive_flip_on_a_mirrored_target(tmp_path, monkeypatch):
    """Target = the source mirrored. A mirrored object's left keypoints are the source's right ones
    mirrored, so the truth for id i is the mirror of its partner's source position. The plain match
    finds the partner's place; flip=adaptive-mnn (mutual-NN criterion picks the mirrored source)
    finds the right one for every keypoint whose partner is annotated; recorded as the run's tta."""
    path = shared("PF-WILLOW", "PF-dataset", "car(G)", "Cars_006a.png")
    im = Image.open(path).convert("RGB")
    W, H = im.size
    im.save(tmp_path / "s.png")
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "t.png")
    pts = scipy.io.loadmat(str(path.with_suffix(".mat")))["pts_coord"].T[:8]
    ids = [0, 1, 2, 3, 4, 5, 6, 9]  # cat: (0,1) (2,3) (4,5) swap; 6's partner 7 is not annotated; 9's is 10
    mate = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4}
    mirror = lambda xy: np.stack([W - 1 - xy[:, 0], xy[:, 1]], 1)  # noqa: E731
    trg = np.stack([mirror(pts[[ids.index(mate.get(i, i))]])[0] for i in ids])
    row = {"pair_id": "m", "dataset": "spair-71k", "category": "cat", "src_image": "s.png", "trg_image": "t.png",
           "src_kps": pts.tolist(), "trg_kps": trg.tolist(), "kps_ids": ids, "src_width": W, "src_height": H,
           "trg_width": W, "trg_height": H}
    pair = Pair(row, tmp_path)
    plain = _stand_ins(monkeypatch, registry.load_class("dinov2").from_settings(None, **SMALL))
    flip = _stand_ins(monkeypatch, registry.load_class("dinov2").from_settings(None, **SMALL, flip="adaptive-mnn"))
    assert plain.tta == "none" and flip.tta == "flip=adaptive-mnn"
    got_plain, got_flip = plain.predict([pair])["nn"][0], flip.predict([pair])["nn"][0]
    ok = lambda pr: np.linalg.norm(pr - trg, axis=1) <= 0.05 * max(W, H)  # noqa: E731
    swapped = np.array([i in mate for i in ids])
    assert ok(got_flip)[swapped].all() and not ok(got_plain)[swapped].any()
    np.testing.assert_array_equal(got_flip[~swapped], got_plain[~swapped])  # partner not annotated: unchanged


def test_flip_needs_a_left_right_table(tmp_path, monkeypatch):
    pairs, _ = _transformed_pairs(tmp_path, every=40)
    m = _stand_ins(monkeypatch, registry.load_class("dinov2").from_settings(None, **SMALL, flip="adaptive-mnn"))
    with pytest.raises(MatcherError, match="no left/right keypoint table for dataset 'pf-willow'"):
        m.predict(pairs[:1])


def test_mnn_searches_only_mutual_cells():
    m = registry.load_class("dinov2").from_settings("tiny", mnn=True)
    deg = torch.deg2rad(torch.tensor([0.0, 25.8, 180.0, 180.0]))
    a = torch.stack([deg.cos(), deg.sin()]).reshape(2, 2, 2)  # source cells a0 .. a3
    deg = torch.deg2rad(torch.tensor([20.0, -30.0, 180.0, 180.0]))
    b = torch.stack([deg.cos(), deg.sin()]).reshape(2, 2, 2)  # b0's best source is a1, b1's is a0
    cells = np.array([[0, 0], [0, 1]])  # a0, a2
    plain = registry.load_class("dinov2").from_settings("tiny")._match(a, b, cells)["nn"]
    mutual = m._match(a, b, cells)["nn"]
    assert plain[0].tolist() == [0, 0] and mutual[0].tolist() == [1, 0]  # a0: b0 plain, b1 mutual
    assert plain[1].tolist() == mutual[1].tolist() == [0, 1]  # a2 <-> b2 is mutual already
    assert m.tta == "mnn"


# ----------------------------------------------------------------------------------------------- settings, head
def test_frame_matchers_refuse_grid_readouts_and_bad_settings():
    from benchmarks.matchers.base import ConfigError, MatcherError

    cls = registry.load_class("dinov2")
    with pytest.raises(ConfigError, match="not offered in the padded frame"):
        cls.from_settings("tiny", readout="kernel-soft-argmax")
    with pytest.raises(ConfigError, match="flip must be one of"):
        cls.from_settings("tiny", flip="always")
    with pytest.raises(ConfigError, match="multiple of the backbone's 14-pixel patch"):
        cls.from_settings("tiny", image_size=100)
    with pytest.raises(ConfigError, match="captioner must be one of none, odise"):
        registry.load_class("sd-dino").from_settings("tiny", captioner="blip")
    with pytest.raises(ConfigError, match="captioner=odise needs ODISE's released checkpoint"):
        registry.load_class("sd-dino").from_settings("tiny", captioner="odise")
    with pytest.raises(MatcherError, match="no ODISE checkpoint there"):
        registry.load_class("geoaware-zs").from_settings("tiny", captioner="odise", captioner_ckpt="/nonexistent/odise.pth")
    with pytest.raises(ConfigError, match="freeu must be one of off, geoaware, diffusers"):
        registry.load_class("geoaware-zs").from_settings("tiny", freeu="sometimes")
    with pytest.raises(ConfigError, match="dino_pos must be one of hub, transformers"):
        registry.load_class("dinov2").from_settings("tiny", dino_pos="nearest")


def test_geoaware_head_checkpoint(tmp_path):
    cls = registry.load_class("geoaware-zs")
    with pytest.raises(MatcherError, match="no head checkpoint there"):
        cls.from_settings("tiny", head=str(tmp_path / "best_856.PTH"))
    torch.manual_seed(0)
    good = tmp_path / "head.pt"
    torch.save(Z.AggregationHead().state_dict(), good)  # GeoAware-SC's real widths, the authors' key layout
    m = cls.from_settings("tiny", head=str(good))
    parts = [torch.randn(c, 4, 4) for c in (640, 1280, 1280, 768)]
    out = m._head(parts)
    assert out.shape == (768, 4, 4) and torch.isfinite(out).all()
    assert "head" in m.fingerprints()
    wrong = tmp_path / "wrong.pt"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(MatcherError, match="is not a key of the aggregation head"):
        cls.from_settings("tiny", head=str(wrong))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(MatcherError, match="cannot read the head checkpoint"):
        cls.from_settings("tiny", head=str(evil))


def test_dino_block_tokens_layer_norm_and_registers():
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    from sd4match.backbones.dino import block_tokens

    torch.manual_seed(0)
    m = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=56,
                                 patch_size=14, mlp_ratio=2)).eval()
    x = torch.randn(1, 3, 84, 84)
    out = m(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(block_tokens(m, x, -1, True), out.last_hidden_state[:, 1:])  # HF's normed output
    torch.testing.assert_close(block_tokens(m, x, 1), out.hidden_states[2][:, 1:])  # block 1, before the norm
    assert block_tokens(m, x).shape == (1, 36, 32)
    with pytest.raises(ValueError, match="layer must be in -3..2"):
        block_tokens(m, x, 3)
    r = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                           image_size=56, patch_size=14, mlp_ratio=2,
                                                           num_register_tokens=4)).eval()
    assert block_tokens(r, x).shape == (1, 36, 32)  # class token and 4 registers dropped


@pytest.mark.parametrize("name", ["sd-dino", "geoaware-zs"])
def test_sd_matchers_run_with_both_test_time_options(name, tmp_path):
    """The mirrored source goes through each SD matcher's own path (windows, PCA / descriptors)."""
    import loaders
    from loaders.testing import write_spair_root

    write_spair_root(tmp_path, {"test": 3}, seed=4, images=True)
    pairs = [Pair(r, tmp_path) for r in loaders.load("spair-71k", tmp_path, "test").to_pylist()]
    m = registry.load_class(name).from_settings("tiny", flip="adaptive-mnn", mnn=True)
    out = m.predict(pairs)
    plain = registry.load_class(name).from_settings("tiny").predict(pairs)
    for r in out:
        assert [len(x) for x in out[r]] == [len(p.src_kps) for p in pairs]
        assert all(np.isfinite(x).all() for x in out[r])
    assert m.tta == "flip=adaptive-mnn,mnn" and m.describe()["tta"] == m.tta
    assert any(not np.array_equal(a, b) for r in out for a, b in zip(out[r], plain[r]))


def test_freeu_channel_rule_ranks_the_widths_of_any_unet():
    """Second check of GeoAware's FreeU rule, on a real diffusers UNet whose widths are not SD's: every
    up-block layer's FreeU call gets the stage of its entering state's width by rank (widest: the
    1280 stage 0, next: the 640 stage 1, others none), which differs from diffusers' by-block rule
    exactly where the rule says (a second widest-width block, the first layers of the next block)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.unets import unet_2d_blocks as blocks

    from sd4match.backbones.freeu import ChannelRule, enable

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(24, 48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8).eval()
    enable(unet, "geoaware")
    calls = []
    dispatch = blocks.apply_freeu

    def record(idx, h, r, **f):
        stage = idx.stage(int(h.shape[1])) if isinstance(idx, ChannelRule) else idx
        calls.append((int(idx), int(h.shape[1]), stage))
        return dispatch(idx, h, r, **f)

    blocks.apply_freeu = record
    try:
        with torch.no_grad():
            unet(torch.randn(1, 4, 16, 16), torch.tensor([50]), encoder_hidden_states=torch.randn(1, 3, 16))
    finally:
        blocks.apply_freeu = dispatch
    n_layers = sum(len(b.resnets) for b in unet.up_blocks)
    assert len(calls) == n_layers  # every up-block layer went through the rule
    rank = {96: 0, 48: 1}  # the widest width plays 1280, the next one 640, by rank
    assert all(stage == rank.get(ch) for _, ch, stage in calls), calls
    by_block = {0: 0, 1: 1}  # diffusers' rule: by up block
    differs = [(blk, ch) for blk, ch, stage in calls if stage != by_block.get(blk)]
    assert (1, 96) in differs  # the second widest-width up block: stage 0 here, 1 in diffusers
    assert any(blk == 2 and ch == 48 for blk, ch in differs)  # the next block's first layers get stage 1
