"""Readouts as pure tensor functions, and the grid geometry."""

from __future__ import annotations

import pytest
import torch

from benchmarks import readouts as R
from benchmarks.dense import from_grid, sample_at, to_grid


def peaked(h=9, w=12, at=(7, 2), value=1.0):
    sim = torch.zeros(1, h, w)
    sim[0, at[1], at[0]] = value
    return sim


def test_nearest_neighbour_returns_x_then_y():
    assert R.nearest_neighbour(peaked(at=(7, 2))).tolist() == [[7.0, 2.0]]


def test_soft_argmax_symmetric_and_temperature():
    sim = torch.full((1, 5, 5), -1.0)
    sim[0, 2, 1] = sim[0, 2, 3] = 1.0  # two equal peaks -> expectation in between
    torch.testing.assert_close(R.soft_argmax(sim, 0.01), torch.tensor([[2.0, 2.0]]))
    flat = torch.zeros(1, 3, 5)  # uniform -> centre of the map
    torch.testing.assert_close(R.soft_argmax(flat, 0.04), torch.tensor([[2.0, 1.0]]))


def test_kernel_soft_argmax_suppresses_far_peak():
    sim = torch.zeros(1, 20, 20)
    sim[0, 5, 5] = 1.0
    sim[0, 15, 15] = 0.99  # a far second peak pulls plain soft-argmax away
    plain = R.soft_argmax(sim, 0.04)[0]
    kern = R.kernel_soft_argmax(sim, sigma=2.0, temperature=0.04)[0]
    assert plain[0] > 7  # pulled towards (15, 15)
    torch.testing.assert_close(kern, torch.tensor([5.0, 5.0]), atol=0.05, rtol=0)


def test_kernel_soft_argmax_by_hand():
    # 1 x 3 map [0, 1, 0.5]; Gaussian sigma 1 at x=1 -> weights [e^-0.5, 1, e^-0.5]
    sim = torch.tensor([[[0.0, 1.0, 0.5]]])
    g = torch.exp(torch.tensor(-0.5))
    logits = torch.tensor([0.0, 1.0, 0.5 * g]) / 0.5
    p = torch.softmax(logits, 0)
    expect = (p * torch.arange(3.0)).sum()
    got = R.kernel_soft_argmax(sim, sigma=1.0, temperature=0.5)
    torch.testing.assert_close(got, torch.tensor([[expect.item(), 0.0]]))


def test_window_soft_argmax_ignores_outside():
    sim = torch.zeros(1, 10, 10)
    sim[0, 4, 4] = 1.0
    sim[0, 4, 5] = 1.0  # inside the window: shares the mass
    sim[0, 9, 9] = 1.0  # outside radius 1 around the argmax (4, 4)
    got = R.window_soft_argmax(sim, radius=1, temperature=0.001)
    torch.testing.assert_close(got, torch.tensor([[4.5, 4.0]]))


def test_apply_unknown():
    with pytest.raises(ValueError, match="unknown readout 'best'; valid: nn, soft-argmax"):
        R.apply("best", peaked())


def test_grid_round_trip_and_align_corners():
    xy = torch.tensor([[0.0, 0.0], [299.0, 199.0], [150.0, 20.0]])
    g = to_grid(xy, (300, 200), 768, (48, 48))
    # align corners: the last input pixel (767) maps to the last cell (47)
    torch.testing.assert_close(to_grid(torch.tensor([[767.0 * 300 / 768, 767.0 * 200 / 768]]), (300, 200), 768, (48, 48)),
                               torch.tensor([[47.0, 47.0]]))
    torch.testing.assert_close(from_grid(g, (300, 200), 768, (48, 48)), xy)


def test_sample_at_bilinear_by_hand():
    feat = torch.arange(12.0).reshape(1, 3, 4)  # value = 4 y + x
    pts = torch.tensor([[0.0, 0.0], [3.0, 2.0], [1.5, 0.5]])
    got = sample_at(feat, pts)[:, 0]
    torch.testing.assert_close(got, torch.tensor([0.0, 11.0, 0.5 * 4 + 1.5]))


def test_upsampled_nn_equals_explicit_upsampling():
    import torch.nn.functional as F

    from benchmarks.dense import upsampled_nn, upsampled_sq_norm

    torch.manual_seed(0)
    fs, ft = torch.randn(32, 6, 7), torch.randn(32, 6, 7)
    src_size, trg_size = (41, 23), (37, 29)
    src_xy = torch.tensor([[3.2, 4.9], [40.0, 22.0], [17.5, 11.0]])
    got = upsampled_nn(fs, ft, src_xy, src_size, trg_size)
    got_cached = upsampled_nn(fs, ft, src_xy, src_size, trg_size, upsampled_sq_norm(ft, trg_size))
    # the DIFT way: upsample both maps to their images, normalise per pixel, compare, argmax
    up_s = F.normalize(F.interpolate(fs[None], size=(23, 41), mode="bilinear", align_corners=False)[0], dim=0)
    up_t = F.normalize(F.interpolate(ft[None], size=(29, 37), mode="bilinear", align_corners=False)[0], dim=0)
    px = src_xy.round().long()
    vec = up_s[:, px[:, 1], px[:, 0]].T
    cos = torch.einsum("nc,chw->nhw", vec, up_t)
    idx = cos.reshape(3, -1).argmax(1)
    expect = torch.stack([idx % 37, idx // 37], 1).float()
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got_cached, expect)


def _exact_cos(fs, ft, xy, src_size, trg_size):
    """DIFT's readout materialised in float64: cosine of the upsampled maps at every target pixel."""
    import torch.nn.functional as F

    (sw, sh), (tw, th) = src_size, trg_size
    up_s = F.interpolate(fs[None].double(), size=(sh, sw), mode="bilinear", align_corners=False)[0]
    up_t = F.normalize(F.interpolate(ft[None].double(), size=(th, tw), mode="bilinear", align_corners=False)[0], dim=0)
    px = xy.round().long()
    px[:, 0].clamp_(0, sw - 1)
    px[:, 1].clamp_(0, sh - 1)
    vec = F.normalize(up_s[:, px[:, 1], px[:, 0]].T, dim=1)
    return torch.einsum("nc,chw->nhw", vec, up_t)


def test_upsampled_norms_equal_materialised_norms():
    import torch.nn.functional as F

    from benchmarks.dense import upsampled_sq_norms

    torch.manual_seed(1)
    for C, h, w in ((8, 1, 1), (8, 1, 5), (8, 4, 1), (64, 6, 7), (32, 16, 16)):
        feats = torch.randn(2, C, h, w)
        sizes = [(37, 29), (5, 3)] if h > 1 else [(9, 4), (2, 2)]  # up- and down-sizing
        for f, (W, H), got in zip(feats, sizes, upsampled_sq_norms(feats, sizes)):
            up = F.interpolate(f[None].double(), size=(H, W), mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(got, (up * up).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C,h", [(16, 8), (64, 16), (1280, 12)])
def test_upsampled_nn_batch_equals_the_per_pair_path(C, h):
    """Several pairs of mixed sizes (shared and distinct target sizes, a pair without keypoints,
    keypoints on and past the image border) in one call == each pair alone; where the two differ,
    both pixels are maxima of the exact (float64) cosine: a tie in exact arithmetic."""
    from benchmarks.dense import upsampled_nn, upsampled_nn_batch, upsampled_sq_norms

    g = torch.Generator().manual_seed(C)
    n = 6
    fs = [torch.randn(C, h, h, generator=g) for _ in range(n)]
    ft = [torch.randn(C, h, h, generator=g) for _ in range(n)]
    src_sizes = [(int(a), int(b)) for a, b in torch.randint(20, 300, (n, 2), generator=g)]
    trg_sizes = [(120, 90), (120, 90), (77, 301), (120, 90), (33, 41), (250, 180)]
    xy = [torch.rand(9, 2, generator=g) * torch.tensor(s, dtype=torch.float32) * 1.1 for s in src_sizes]
    xy[0][0] = torch.tensor([0.0, 0.0])
    xy[3] = torch.zeros(0, 2)
    cached = [None, upsampled_sq_norms(ft[1][None], [trg_sizes[1]])[0], None, None, None, None]
    got, norms = upsampled_nn_batch(fs, ft, xy, src_sizes, trg_sizes, cached, max_elements=50_000)
    assert norms[1] is cached[1] and all(q.shape == (th, tw) for q, (tw, th) in zip(norms, trg_sizes))
    ties = 0
    assert got[3].shape == (0, 2)
    for b in (0, 1, 2, 4, 5):
        want = upsampled_nn(fs[b], ft[b], xy[b], src_sizes[b], trg_sizes[b])
        assert got[b].shape == want.shape == (len(xy[b]), 2)
        cos = _exact_cos(fs[b], ft[b], xy[b], src_sizes[b], trg_sizes[b])
        for k in torch.nonzero((got[b] != want).any(1)).flatten().tolist():
            (x1, y1), (x2, y2) = got[b][k].long().tolist(), want[k].long().tolist()
            best = cos[k].max()
            assert best - cos[k, y1, x1] < 1e-6 and best - cos[k, y2, x2] < 1e-6, (b, k)
            ties += 1
    assert ties <= 2  # ties are rare; most keypoints must agree exactly


def test_grid_readouts_normalise_as_sd4match():
    """x / (||x|| + 1e-6) (SD4Match's evaluator), not x / max(||x||, eps): on features of small norm
    the two differ by far more than the readout tolerance."""
    from benchmarks.dense import NORM_EPS, cosine_maps

    g = torch.Generator().manual_seed(3)
    src = torch.randn(4, 8, generator=g) * 1e-6
    trg = torch.randn(8, 5, 5, generator=g) * 1e-6
    want = (src / (src.norm(dim=1, keepdim=True) + 1e-6)) @ (trg / (trg.norm(dim=0, keepdim=True) + 1e-6)).reshape(8, -1)
    got = cosine_maps(src, trg, eps=NORM_EPS)
    torch.testing.assert_close(got, want.reshape(4, 5, 5), rtol=1e-6, atol=0)
    plain = cosine_maps(src, trg)
    assert (plain - got).abs().max() > 0.1


def test_dense_grid_readouts_use_sd4match_normalisation_and_clamp(monkeypatch, tmp_path):
    """The dense matchers' grid path hands SD4Match's epsilon to the cosine and clamps the source
    keypoints into the frame (a keypoint on the border maps to 1e-4 frame pixels, not 0)."""
    import numpy as np

    import benchmarks.dense as D
    from benchmarks import registry
    from benchmarks.matchers.base import Pair
    from loaders.testing import write_spair_root

    seen = []
    real_cos, real_grid = D.cosine_maps, D.to_grid

    def cos(src, trg, eps=None):
        seen.append(("cos", eps))
        return real_cos(src, trg, eps=eps)

    def grid(xy, size, S, hw, clamp=False):
        seen.append(("grid", clamp))
        return real_grid(xy, size, S, hw, clamp=clamp)

    monkeypatch.setattr(D, "cosine_maps", cos)
    monkeypatch.setattr(D, "to_grid", grid)
    import loaders

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 1}, images=True)
    table = loaders.load("spair-71k", root, "test")
    pair = Pair(table.slice(0, 1).to_pylist()[0], root)
    m = registry.load_class("single").from_settings("tiny", readout="soft-argmax")
    m.predict([pair])
    assert ("cos", D.NORM_EPS) in seen and ("grid", True) in seen
    on_border = real_grid(torch.tensor([[0.0, 0.0], [300.0, 200.0]]), (300, 200), 768, (48, 48), clamp=True)
    np.testing.assert_allclose(on_border.numpy(), [[1e-4 / 767 * 47] * 2, [(767 - 1e-4) / 767 * 47] * 2], rtol=1e-6)
