"""The trained aggregation head against its authors' code (``../shared/golden/heads``, README there):
DIY-SC's real released DINOv2 adapter, a small head in GeoAware-SC's key layout (gathering, output,
descriptors), the authors' rule for loading a head of another size, safe loading, and the supervised
GeoAware-SC pipeline end to end through the CLI. Widths, keys and files are read from the fixture's
own description; tolerances are its README's (head outputs and descriptors: 1e-5 of the largest
magnitude; the window soft-argmax 2e-4 cells; the argmax exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.matchers.base import MatcherError
from sd4match.methods.geoaware_head import (
    AggregationHead,
    descriptors,
    gather,
    load_head,
    load_into,
)

from .test_golden import assert_rel, golden
from .test_golden_baselines import _one_pair_root

CELLS = 2e-4


@pytest.fixture(scope="module")
def inputs() -> dict:
    return json.loads(golden("heads", "inputs.json").read_text())


def _cells(out: torch.Tensor) -> torch.Tensor:
    """(P, h, w) -> (cells, P) in row-major cell order, as the fixtures store descriptors."""
    return out.reshape(out.shape[0], -1).T


def test_the_released_diy_sc_adapter(inputs):
    meta = inputs["diy_dino_head"]
    head = load_head(str(golden("heads", "diy_dino_spair.pth")))  # saved on CUDA: read on the CPU
    assert head.describe()["feature_dims"] == meta["feature_dims"] and head.projection_dim == meta["projection_dim"]
    assert sorted(head.state_dict()) == sorted(meta["keys"])  # every key used, the logit scales kept
    g = load_file(str(golden("heads", "diy_dino_head.safetensors")))
    with torch.no_grad():
        out = head(g["input"])
        assert_rel(out, g["head_out"], what="DIY-SC adapter output")
        assert_rel(_cells(descriptors(out[0])), g["descriptors"][0], what="DIY-SC descriptors")


def test_a_geoaware_layout_head_gathering_output_and_descriptors(inputs):
    meta = inputs["geo_head_small"]
    head = load_head(str(golden("heads", "geo_head_small.pth")))
    d = head.describe()
    assert (d["feature_dims"], d["projection_dim"], d["bottleneck_channels"]) == (
        meta["feature_dims"], meta["projection_dim"], meta["bottleneck_channels"])
    assert sum(p.numel() for p in head.parameters()) == meta["param_count"]
    g = load_file(str(golden("heads", "geo_head_small.safetensors")))
    gathered = gather(g["s3"][0], g["s4"][0], g["s5"][0], g["dino"][0])
    assert_rel(gathered, g["gathered"][0], what="gathered inputs (s3, s4, s5 to the grid, dino)")
    with torch.no_grad():
        out = head([gathered])
    assert_rel(out, g["head_out"][0], what="head output")
    assert_rel(_cells(descriptors(out)), g["descriptors"][0], what="descriptors")
    # the safetensors copy of the same weights gives the same head
    assert head.state_dict().keys() == load_head(str(golden("heads", "geo_head_small.pth"))).state_dict().keys()


def test_loading_into_a_head_of_another_size_follows_the_authors_rule(inputs):
    state = torch.load(golden("heads", "geo_head_small.pth"), map_location="cpu", weights_only=True)
    dims = inputs["geo_head_small"]["feature_dims"]
    bigger = AggregationHead([*dims, 32], inputs["geo_head_small"]["projection_dim"])
    copied = load_into(bigger, state)
    mix = bigger.state_dict()["mixing_weights"]
    assert torch.equal(mix[:4], state["mixing_weights"][:4]) and mix[4] == 0
    assert "mixing_weights[:4]" in copied and "bottleneck_layers.0.0.conv1.weight" in copied
    assert not any(k.startswith("bottleneck_layers.4.") for k in copied)  # the new stage keeps its own start
    assert torch.equal(bigger.state_dict()["logit_scale"], state["logit_scale"])


def test_head_files_are_read_safely_with_one_line_errors(tmp_path):
    with pytest.raises(MatcherError, match="no head checkpoint there.*GeoAware-SC release"):
        load_head(str(tmp_path / "best_856.PTH"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MatcherError, match="cannot read the head checkpoint"):
        load_head(str(tmp_path / "evil.pt"))
    state = AggregationHead([64], 128).state_dict()
    state["bottleneck_layers.0.0.conv1.weight"] = torch.full_like(state["bottleneck_layers.0.0.conv1.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(MatcherError, match="NaN"):
        load_head(str(tmp_path / "nan.pt"))
    torch.save({"blocks.0.conv1.weight": torch.zeros(16, 64, 1, 1)}, tmp_path / "old.pt")
    with pytest.raises(MatcherError, match="is not a key of the aggregation head"):
        load_head(str(tmp_path / "old.pt"))
    state = AggregationHead([64], 128).state_dict()
    state["bottleneck_layers.0.0.conv2.weight"] = torch.zeros(32, 32, 5, 5)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(MatcherError, match="does not fit the aggregation head"):
        load_head(str(tmp_path / "shape.pt"))
    del state["mixing_weights"]
    state["bottleneck_layers.0.0.conv2.weight"] = torch.zeros(32, 32, 3, 3)
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(MatcherError, match="does not fit"):
        load_head(str(tmp_path / "missing.pt"))


def test_geoaware_needs_a_head_and_says_where_one_is_published():
    from benchmarks import registry

    with pytest.raises(MatcherError, match="needs head=.*GeoAware-SC release"):
        registry.load_class("geoaware").from_settings(None)
    with pytest.raises(MatcherError, match="needs head=.*DIY-SC"):
        registry.load_class("diy-sc").from_settings(None)


def test_supervised_geoaware_end_to_end_through_the_cli(tmp_path):
    import pandas as pd

    from benchmarks.run import main as run_main
    from sd4match.methods.frame_geometry import to_frame

    e2e = json.loads(golden("heads", "geoaware_supervised.json").read_text())
    base = json.loads(golden(e2e["fixture"], "inputs.json").read_text())
    root = _one_pair_root(tmp_path, base)
    out = tmp_path / "run"
    assert run_main(["--matcher", "geoaware", "--set", f"head={golden('heads', 'geoaware_head_e2e.pth')}",
                     "--set", f"model_id={golden(e2e['fixture'], 'sd15-stack')}",
                     "--set", f"dino_id={golden(e2e['fixture'], 'dinov2')}", "--set", f"seed={base['noise_seed']}",
                     "--dataset", "pf-willow", "--data-root", str(root), "--limit", "1", "--out", str(out),
                     "--quiet"]) == 0
    preds = pd.read_parquet(out / "predictions.parquet")
    size = tuple(base["trg_size_wh"])
    for readout, key, tol in (("geoaware-soft-argmax", "pred_840_window7", 14 * CELLS), ("nn", "pred_840_nn", 1e-3)):
        row = preds[(preds.pair_id == base["pair_id"]) & (preds.readout == readout)].iloc[0]
        got = to_frame(np.stack(row["pred_kps"]).astype(np.float64), *size, 840)
        err = np.abs(got - np.array(e2e[key])).max()
        assert err <= tol, f"{readout}: {err / 14:.3g} cells from the reference"
    rec = json.loads((out / "run.json").read_text())
    head = rec["matcher_info"]["head"]
    assert head["feature_dims"] == e2e["feature_dims"] and head["projection_dim"] == e2e["projection_dim"]
    assert len(head["sha256"]) == 64 and rec["config"]["geoaware_window"] == 7
    assert any(m.startswith("head=geoaware_head_e2e.pth@") for m in rec["provenance"]["marks"])


def _loss_cases() -> list[str]:
    from .test_golden import GOLDEN

    path = GOLDEN / "heads" / "inputs.json"
    return sorted(json.loads(path.read_text())["loss"]["cases"]) if path.is_file() else ["(fixtures absent)"]


@pytest.mark.parametrize("case", _loss_cases())
def test_geoaware_training_loss_and_gradients(case, inputs):
    """GeoAware-SC's loss (sparse CLIP term, dense flow term with and without the training window,
    pose-variant pair augmentation) and its gradients w.r.t. every descriptor map and the logit scale."""
    from sd4match.training.head_loss import head_loss

    meta = inputs["loss"]
    c = meta["cases"][case]
    g = load_file(str(golden("heads", "loss.safetensors")))
    head = torch.load(golden("heads", "loss_head.pth"), map_location="cpu", weights_only=True)
    maps = {k: g[k].clone().requires_grad_() for k in ("d1", "d2", "d1_flip", "d2_flip")}
    scale = head["logit_scale"].clone().float().requires_grad_()
    assert float(scale) == pytest.approx(meta["logit_scale"], rel=1e-7)
    loss = head_loss(maps["d1"], maps["d2"], g["k1"], g["k2"], scale, int(meta["num_patches"]),
                     dense=bool(c["dense_obj"]), window=int(c["soft_train_window"]),
                     perm=meta["permute_list"] if c["pair_augment"] else None,
                     d1_flip=maps["d1_flip"], d2_flip=maps["d2_flip"], gaussian=float(meta["gaussian_augment"]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(c["loss"], rel=1e-5)
    assert float(scale.grad) == pytest.approx(c["logit_scale_grad"], rel=1e-5)
    for name, t in maps.items():
        key = f"{case}.grad_{name}"
        if key in g:
            assert_rel(t.grad, g[key], rel=5e-5, what=f"{case}: d loss / d {name}")
        else:
            assert t.grad is None or not t.grad.abs().any(), f"{case}: {name} should not take part"
