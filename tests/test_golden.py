"""Faithfulness: this toolkit against outputs of the authors' own code (DIFT, SD4Match, GeoAware-SC).

The fixtures in ``../shared/golden`` were made by running the reference implementations on a small
seeded random-weight SD stack with every random draw recorded (see its README.md). These tests
feed the recorded draws through :attr:`SDFeaturizer.noise_source` and assert equality within the
tolerances the README states: 1e-5 relative to the golden tensor's largest magnitude for features,
latents, prompt embeddings, loss and gradients; 2e-4 grid cells for continuous readouts; exact for
argmax readouts (recorded near-ties excepted). They are skipped with a reason when the folder is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks import readouts as R
from benchmarks.dense import (
    DenseConfig,
    DenseMatcher,
    ImageInfo,
    to_grid,
    upsampled_nn,
    upsampled_nn_batch,
)

GOLDEN = Path(os.environ.get("CORRBENCH_SHARED_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))
REL = 1e-5  # features, latents, embeddings, loss, gradients: relative to the golden tensor's max magnitude
CELLS = 2e-4  # continuous readouts, grid cells


def golden(*parts: str) -> Path:
    path = GOLDEN.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"golden fixtures not available: {path} is absent (set CORRBENCH_SHARED_GOLDEN)")
    return path


def fixture_image(rel: str) -> Path:
    """An image a fixture names by its path relative to the toolkit root (``../shared/data/...``)."""
    from .conftest import shared

    parts = Path(rel).parts
    if parts[:3] != ("..", "shared", "data"):
        raise AssertionError(f"fixture image {rel!r} is not under ../shared/data")
    return shared(*parts[3:])


def image_size(rel: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(fixture_image(rel)) as im:
        return im.size


def category_of(rel: str) -> str:
    """PF-Willow's category of an image: its folder's name before the '(' (``car(G)`` -> ``car``)."""
    return Path(rel).parent.name.split("(")[0]


def _json(*parts: str) -> dict:
    path = GOLDEN.joinpath(*parts)
    return json.loads(path.read_text()) if path.is_file() else {}


def _cases(group: str) -> list[str]:
    cases = sorted(_json("readouts", "readouts_sd4match_dift.json").get(group, {}))
    return cases or ["(fixtures absent)"]


def dift_runs() -> list[str]:
    """The DIFT runs the fixture holds (read at collection; a placeholder that skips when absent)."""
    return sorted(_json("dift", "dift.json").get("runs", {})) or ["(fixtures absent)"]


def assert_rel(got: torch.Tensor, want: torch.Tensor, rel: float = REL, what: str = "") -> None:
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item() / want.abs().max().item()
    assert err <= rel, f"{what}: max difference {err:.3g} of the largest magnitude (tolerance {rel:g})"


class Replay:
    """A ``noise_source`` that hands out recorded (eps, noise) draws, one image at a time, in order."""

    def __init__(self, draws):
        self.draws = list(draws)

    def __call__(self, keys, seed, shape, ensemble, n_eps):
        taken = [self.draws.pop(0) for _ in keys]
        eps = torch.stack([e.reshape(n_eps, *shape) for e, _ in taken])
        noise = torch.stack([n.reshape(ensemble, *shape) for _, n in taken])
        return eps, noise


def u8_to_unit(pixels_u8: torch.Tensor) -> torch.Tensor:
    return pixels_u8.float() / 255.0


# ----------------------------------------------------------------------------------------------- DIFT
@pytest.fixture(scope="module")
def dift():
    from sd4match.methods.dift import DiftMatcher

    stack = golden("sd-stack")
    m = DiftMatcher.from_settings(None, model_id=str(stack), image_size=256, ensemble=8, batch_size=2)
    yield m
    m.close()


def test_dift_settings_are_difts():
    from sd4match.methods.dift import DiftConfig

    cfg = DiftConfig(model_id="x")
    assert (cfg.t, cfg.up_block, cfg.ensemble, cfg.resize, cfg.posterior) == (261, 1, 8, "bicubic", "per-member")
    meta = json.loads(golden("dift", "dift.json").read_text())
    assert cfg.prompt.format(category=meta["category"]) == meta["prompt"]


def _dift_pixels(run: str) -> torch.Tensor:
    """The resized pixels of a run's image: its own file's, or those of another run of the same image."""
    runs = json.loads(golden("dift", "dift.json").read_text())["runs"]
    for name in [run, *sorted(r for r in runs if runs[r]["image"] == runs[run]["image"])]:
        g = load_file(str(golden("dift", f"{name}.safetensors")))
        if "pixels_u8" in g:
            return g["pixels_u8"]
    raise AssertionError(f"no resized pixels recorded for the image of {run}")


def test_dift_resize_equals_pillow_bicubic(dift):
    runs = json.loads(golden("dift", "dift.json").read_text())["runs"]
    checked = set()
    for name, run in sorted(runs.items()):
        g = load_file(str(golden("dift", f"{name}.safetensors")))
        if "pixels_u8" not in g:
            continue
        got, _, _ = dift._decode(fixture_image(run["image"]))
        assert torch.equal(got, g["pixels_u8"]), f"{run['image']}: resized pixels differ from DIFT's"
        checked.add(run["image"])
    assert len(checked) >= 1


def test_dift_prompt_embedding(dift):
    meta = json.loads(golden("dift", "dift.json").read_text())
    want = load_file(str(golden("dift", "prompt_embeds.safetensors")))["prompt_embeds"]
    assert_rel(dift.sd.encode_text([meta["prompt"]]), want, what="prompt embedding")
    assert_rel(dift._context([meta["category"]]), want, what="matcher context")


def test_dift_posterior(dift):
    meta = json.loads(golden("dift", "dift.json").read_text())
    name = next(r for r in sorted(meta["runs"]) if "posterior_mean_member0" in load_file(str(golden("dift", f"{r}.safetensors"))))
    run = meta["runs"][name]
    g = load_file(str(golden("dift", f"{name}.safetensors")))
    info = ImageInfo(Path(run["image"]).name, "k-posterior", meta["category"], *run["original_size_wh"])
    mean, std = dift.posterior([u8_to_unit(_dift_pixels(name))], [info])
    assert_rel(mean, g["posterior_mean_member0"], what="posterior mean")
    assert_rel(std, g["posterior_std_member0"], what="posterior std")


@pytest.mark.parametrize("fixture", dift_runs())
def test_dift_features_with_recorded_draws(fixture):
    """One VAE posterior sample per member (vae_eps [E, 4, h, w]) and the ensemble noise; the image,
    its size and the ensemble come from the fixture's description."""
    from sd4match.methods.dift import DiftMatcher

    meta = json.loads(golden("dift", "dift.json").read_text())
    run = meta["runs"][fixture]
    g = load_file(str(golden("dift", f"{fixture}.safetensors")))
    pixels = _dift_pixels(fixture)
    m = DiftMatcher.from_settings(None, model_id=str(golden("sd-stack")), image_size=int(meta["image_size"][0]),
                                  ensemble=int(run["ensemble_size"]), t=int(meta["t"]), up_block=int(meta["up_ft_index"]))
    m.sd.noise_source = Replay([(g["vae_eps"], g["noise"])])
    info = ImageInfo(Path(Path(run["image"]).name), f"key-{fixture}", meta["category"], *run["original_size_wh"])
    with torch.no_grad():
        feats = m.extract([u8_to_unit(pixels)], [info])
    assert_rel(feats, g["features"], what=f"{fixture} features")
    m.close()


def test_dift_readout_on_recorded_features():
    import re

    meta = json.loads(golden("dift", "dift.json").read_text())["readout"]
    src_run, trg_run = re.search(r"runs (\S+) \(source\) and (\S+) \(target\)", meta["entry_point"]).groups()
    ss, ts = tuple(meta["src_original_size_wh"]), tuple(meta["trg_original_size_wh"])
    g = load_file(str(golden("dift", "readout.safetensors")))
    fs = load_file(str(golden("dift", f"{src_run}.safetensors")))["features"][0]
    ft = load_file(str(golden("dift", f"{trg_run}.safetensors")))["features"][0]
    pred = upsampled_nn(fs, ft, g["src_kps_int"].float(), ss, ts).long()
    _assert_argmax(pred, g["pred_xy"], g["best_cos"] - g["second_best_cos"], g["second_best_xy"])
    # the batched path the matcher runs (several pairs per call; this pair twice, with another between)
    (batched, other, again), _ = upsampled_nn_batch([fs, ft, fs], [ft, fs, ft], [g["src_kps_int"].float()] * 3,
                                                    [ss, ts, ss], [ts, ss, ts])
    for got in (batched, again):
        _assert_argmax(got.long(), g["pred_xy"], g["best_cos"] - g["second_best_cos"], g["second_best_xy"])


def _assert_argmax(pred, want, gap, second):
    for k in range(len(want)):
        if torch.equal(pred[k], want[k]):
            continue
        assert gap[k] < 1e-5 and torch.equal(pred[k], second[k]), f"keypoint {k}: {pred[k].tolist()} != {want[k].tolist()}"


@pytest.mark.parametrize("case", _cases("dift"))
def test_dift_readout_random_maps(case):
    g = load_file(str(golden("readouts", "sd4match_dift.safetensors")))
    sizes = json.loads(golden("readouts", "readouts_sd4match_dift.json").read_text())["dift"][case]
    args = (g["src_ft"][0], g["trg_ft"][0], g[f"{case}_src_kps"].float(),
            tuple(sizes["src_original_size_wh"]), tuple(sizes["trg_original_size_wh"]))
    (batched,), _ = upsampled_nn_batch(*([a] for a in args))
    for pred in (upsampled_nn(*args).long(), batched.long()):
        _assert_argmax(pred, g[f"{case}_pred_xy"], g[f"{case}_best_cos"] - g[f"{case}_second_best_cos"],
                       g[f"{case}_second_best_xy"])


# ----------------------------------------------------------------------------------------------- SD4Match
def _convert(tmp_path, variant, *parts):
    from sd4match.convert import convert

    out = tmp_path / f"{variant}.safetensors"
    convert(variant, golden("sd4match", "prompt", *parts), out)
    return out


def test_convert_single_and_class_keep_the_authors_rows(tmp_path):
    from sd4match import checkpoint as ckpt

    raw = torch.load(golden("sd4match", "prompt", "Single_spair_sd2-1_TokenEmbeds75", "caption.pt"), weights_only=True)
    mod, meta = ckpt.load(_convert(tmp_path, "single", "Single_spair_sd2-1_TokenEmbeds75", "caption.pt"),
                          variant="single", text_width=1024)
    assert meta["prompt_format"] == 2
    assert torch.equal(mod.tokens.data, raw["dataset"][0, 1:76].float())
    raw = torch.load(golden("sd4match", "prompt", "Class_spair_sd2-1_TokenEmbeds75", "caption.pt"), weights_only=True)
    mod, _ = ckpt.load(_convert(tmp_path, "class", "Class_spair_sd2-1_TokenEmbeds75", "caption.pt"),
                       variant="class", text_width=1024)
    keys = json.loads(golden("sd4match", "sd4match.json").read_text())["class_prompt"]["keys"]
    assert mod.categories == sorted(keys)
    for c in keys:
        assert torch.equal(mod([c])[0], raw[c][0, 1:76].float())


def test_single_initialisation_is_the_authors():
    """The authors' file was initialised as token embedding of its random ids + position 1..75 (and
    saved before any training step), so our initialiser with those ids reproduces its rows."""
    from sd4match.backbones.sd_models import load_components
    from sd4match.prompts import text_init

    info = json.loads(golden("sd4match", "sd4match.json").read_text())["single_prompt"]
    raw = torch.load(golden("sd4match", "prompt", "Single_spair_sd2-1_TokenEmbeds75", "caption.pt"), weights_only=True)
    comps = load_components(str(golden("sd-stack")))
    rows = text_init(comps.text_encoder, 75, ids=torch.tensor(info["random_token_ids"]))
    assert_rel(rows, raw["dataset"][0, 1:76], what="initial rows")
    # BOS and EOS rows of the file are the text encoder's embeddings + positions 0 and 76
    from sd4match.prompts import PromptEncoder

    enc = PromptEncoder(comps.text_encoder, comps.tokenizer)
    full = enc.input_embeddings(rows[None])
    assert_rel(full[0, [0, 76]], raw["dataset"][0, [0, 76]], what="BOS/EOS rows")


def _pair():
    """(source image, target image, category) of the SD4Match fixture's pair, from its description."""
    pair = json.loads(golden("sd4match", "sd4match.json").read_text())["pair"]
    return pair["src"], pair["trg"], category_of(pair["src"])


def _pair_inputs():
    g = load_file(str(golden("sd4match", "inputs.safetensors")))
    src, trg, cat = _pair()
    infos = [ImageInfo(Path(Path(src).name), "golden-src", cat, *image_size(src)),
             ImageInfo(Path(Path(trg).name), "golden-trg", cat, *image_size(trg))]
    images = [u8_to_unit(g["src_pixels_u8"]), u8_to_unit(g["trg_pixels_u8"])]
    draws = [(g["src_vae_eps"], g["src_noise"]), (g["trg_vae_eps"], g["trg_noise"])]
    return g, images, infos, draws


def test_sd4match_resize_equals_the_pair_dataset(tmp_path):
    from sd4match.methods.sd4match import SingleMatcher

    g = load_file(str(golden("sd4match", "inputs.safetensors")))
    size = int(json.loads(golden("sd4match", "sd4match.json").read_text())["image_size"][0])
    m = SingleMatcher.from_settings(None, model_id="tiny", image_size=size)
    src, trg, _ = _pair()
    for rel, key in ((src, "src_pixels_u8"), (trg, "trg_pixels_u8")):
        got, _, _ = m._decode(fixture_image(rel))
        assert (got.int() - g[key].int()).abs().max() <= 1, f"{rel}: bilinear resize differs from SD4Match's by > 1"


def test_single_context_and_features(tmp_path):
    from sd4match.methods.sd4match import SingleMatcher

    want = load_file(str(golden("sd4match", "single.safetensors")))
    ck = _convert(tmp_path, "single", "Single_spair_sd2-1_TokenEmbeds75", "caption.pt")
    meta = json.loads(golden("sd4match", "sd4match.json").read_text())
    m = SingleMatcher.from_settings(None, model_id=str(golden("sd-stack")), checkpoint=str(ck),
                                    image_size=int(meta["image_size"][0]), batch_size=2)
    # the matcher's defaults are the authors' test settings
    assert (m.config.t, m.config.ensemble, m.config.up_block, m.config.posterior) == (
        int(meta["t"]), int(meta["ensemble_size"]), int(meta["layer"]), "per-image")
    with torch.no_grad():
        assert_rel(m._context([_pair()[2]]), want["context"], what="Single context")
        _, images, infos, draws = _pair_inputs()
        m.sd.noise_source = Replay(draws)
        feats = m.extract(images, infos)
    assert_rel(feats[:1], want["src_features"], what="Single source features")
    assert_rel(feats[1:], want["trg_features"], what="Single target features")
    m.close()


def test_cpm_tokens_context_and_features(tmp_path):
    from benchmarks.matchers.base import Pair
    from sd4match.methods.sd4match import CPMMatcher

    want = load_file(str(golden("sd4match", "cpm.safetensors")))
    dino = load_file(str(golden("sd4match", "dino.safetensors")))
    ck = _convert(tmp_path, "cpm", "CPM_spair_sd2-1_Pair-DINO-Feat-G25-C50", "ckpt.pt")
    # DINOv2-B/14's architecture (random weights) fixes the token shape; the tokens themselves are the recorded ones
    meta = json.loads(golden("sd4match", "sd4match.json").read_text())
    m = CPMMatcher.from_settings(None, model_id=str(golden("sd-stack")), dino_id="random-base", checkpoint=str(ck),
                                 image_size=int(meta["image_size"][0]), batch_size=2)
    src_tok, trg_tok = dino["src_last_hidden_state"][0, 1:].float(), dino["trg_last_hidden_state"][0, 1:].float()
    src, trg, cat = _pair()
    with torch.no_grad():
        m._setup_prompt()
        tokens = m._prompt([cat], src_dino=src_tok[None], trg_dino=trg_tok[None])
        assert_rel(tokens[0], want["tokens75"], what="CPM tokens")
        assert_rel(m._encoder(tokens), want["context"], what="CPM context")
        # the whole per-pair path: DINOv2 tokens from the per-image store, one prompt for both images
        _, images, infos, draws = _pair_inputs()
        m._tokens.mem.update({infos[0].key: src_tok, infos[1].key: trg_tok})
        (sw, sh), (tw, th) = image_size(src), image_size(trg)
        row = {"pair_id": "golden", "category": cat, "src_image": "s.png", "trg_image": "t.png",
               "src_kps": [], "trg_kps": [], "src_width": sw, "src_height": sh, "trg_width": tw, "trg_height": th}
        m._prefetched = {"s.png": (images[0], infos[0]), "t.png": (images[1], infos[1])}
        m.sd.noise_source = Replay(draws)
        (fs, ft), = m.pair_features([Pair(row, Path("."))])
    assert_rel(fs[None], want["src_features"], what="CPM source features")
    assert_rel(ft[None], want["trg_features"], what="CPM target features")
    m.close()


# ----------------------------------------------------------------------------------------------- readouts
SD4M_READOUTS = {"nn": "nn", "softmax": "soft-argmax", "kernelsoftmax": "kernel-soft-argmax"}


class _Recorded(DenseMatcher):
    """The toolkit's own dense readout path on recorded feature maps: everything after the features
    (original pixels to the grid with its clamp, the normalised cosine maps, the readouts, grid back
    to pixels) is the base every grid matcher runs; only the features are the fixture's."""

    name = "recorded"

    def __init__(self, fs, ft, **settings):
        super().__init__(DenseConfig(**settings))
        self._maps = (fs, ft)

    def extract(self, images, infos):  # pragma: no cover - the features are given
        raise AssertionError("no image is read: the features are the fixture's")

    def pair_features(self, pairs):
        return [self._maps] * len(pairs)


def _matcher_grid(fs, ft, src_kps, src_size, trg_size, frame) -> dict[str, torch.Tensor]:
    """Each SD4Match readout of the dense base, as target grid positions (its pixel output scaled back)."""
    from benchmarks.grid import grid_to_pixel
    from benchmarks.matchers.base import Pair

    m = _Recorded(fs, ft, image_size=frame, readout=",".join(SD4M_READOUTS.values()), temperature=0.04,
                  kernel_sigma=7.0)
    row = {"pair_id": "golden", "category": "x", "src_image": "s", "trg_image": "t",
           "src_kps": src_kps.double().tolist(), "trg_kps": src_kps.double().tolist(),
           "src_width": src_size[0], "src_height": src_size[1], "trg_width": trg_size[0], "trg_height": trg_size[1]}
    pred = m.predict([Pair(row, Path("."))])
    fx, fy = grid_to_pixel(trg_size, frame, tuple(ft.shape[1:]))
    return {r: torch.from_numpy(pred[r][0]) / torch.tensor([fx, fy], dtype=torch.float64) for r in SD4M_READOUTS.values()}


def _check_grid_readouts(got: dict, prefix: str, g) -> dict[str, float]:
    errs = {}
    for theirs, ours in SD4M_READOUTS.items():
        want = g[f"{prefix}_{theirs}_grid"].double()
        err = (got[ours] - want).abs().max().item()
        # argmax: the same cell (the float32 pixel scaling moves it by far less than 1e-3 cells)
        tol = 1e-3 if ours == "nn" else CELLS
        assert err <= tol, f"{prefix} {ours}: {err:.3g} cells from the reference (tolerance {tol:g})"
        errs[ours] = err
    return errs


def _plain_normalisation_is_farther(run, prefix, g, monkeypatch) -> None:
    """Contrast: the same path with plain L2 normalisation (epsilon 0) lands farther from the reference
    than the toolkit's x / (||x|| + 1e-6), so the test can tell the two apart."""
    import benchmarks.dense as D

    ours = run()
    soft = [r for r in SD4M_READOUTS.values() if r != "nn"]
    mine = max((ours[r] - g[f"{prefix}_{t}_grid"].double()).abs().max().item()
               for t, r in SD4M_READOUTS.items() if r in soft)
    monkeypatch.setattr(D, "NORM_EPS", 0.0)
    plain = run()
    monkeypatch.undo()
    theirs = max((plain[r] - g[f"{prefix}_{t}_grid"].double()).abs().max().item()
                 for t, r in SD4M_READOUTS.items() if r in soft)
    assert mine < theirs, f"{prefix}: plain normalisation is as close ({theirs:.3g}) as the toolkit's ({mine:.3g})"


@pytest.mark.parametrize("frame", [256, 768])
@pytest.mark.parametrize("variant", ["single", "cpm"])
def test_sd4match_readouts_on_its_features(frame, variant, monkeypatch):
    g = load_file(str(golden("sd4match", "readouts.safetensors")))
    info = json.loads(golden("sd4match", "sd4match.json").read_text())["readouts"]
    if frame not in info["frames"]:
        pytest.skip(f"frame {frame} not in this fixture set")
    feats = load_file(str(golden("sd4match", f"{variant}.safetensors")))
    fs, ft = feats["src_features"][0], feats["trg_features"][0]
    src = torch.tensor(info["src_kps_original"], dtype=torch.float64)
    ss, ts = tuple(info["src_original_size_wh"]), tuple(info["trg_original_size_wh"])
    # original pixels -> grid, as the dense base maps them (SD4Match: frame F, then align corners)
    query = to_grid(src.float(), ss, frame, tuple(fs.shape[1:]), clamp=True)
    assert (query - g[f"f{frame}_query_grid"]).abs().max() <= 1e-6  # bit for bit in practice
    run = lambda: _matcher_grid(fs, ft, src, ss, ts, frame)  # noqa: E731
    _check_grid_readouts(run(), f"f{frame}_{variant}", g)
    _plain_normalisation_is_farther(run, f"f{frame}_{variant}", g, monkeypatch)


@pytest.mark.parametrize("case", _cases("sd4match"))
def test_sd4match_readouts_random_maps(case, monkeypatch):
    g = load_file(str(golden("readouts", "sd4match_dift.safetensors")))
    sizes = json.loads(golden("readouts", "readouts_sd4match_dift.json").read_text())["sd4match"][case]
    ss, ts = tuple(sizes["src_original_size_wh"]), tuple(sizes["trg_original_size_wh"])
    src = g[f"{case}_src_kps_original"].double()
    fs, ft = g["src_ft"][0], g["trg_ft"][0]
    query = to_grid(src.float(), ss, 768, tuple(fs.shape[1:]), clamp=True)
    assert (query - g[f"{case}_query_grid"]).abs().max() <= 1e-6
    run = lambda: _matcher_grid(fs, ft, src, ss, ts, 768)  # noqa: E731
    _check_grid_readouts(run(), case, g)
    _plain_normalisation_is_farther(run, case, g, monkeypatch)


@pytest.mark.parametrize("window", [7, 5, 0])
def test_geoaware_soft_argmax(window):
    g = load_file(str(golden("readouts", "geoaware.safetensors")))
    sim = g["sim_rows"].reshape(-1, 60, 60)
    got = R.apply("geoaware-soft-argmax", sim, geoaware_window=window)
    assert (got - g[f"window{window}_flow_grid"]).abs().max() <= CELLS
    assert ((got + 0.5) * 14 - g[f"window{window}_kps_840"]).abs().max() <= CELLS * 14  # patch centres
    assert torch.equal((R.nearest_neighbour(sim) + 0.5) * 14, g["nn_kps_840"])



def test_geoaware_masks_with_zeros_not_minus_infinity():
    """Where similarities are low, GeoAware's zeroed cells outside the window still pull the expectation
    (they take part in the softmax); the toolkit's own window readout ignores them."""
    sim = torch.full((1, 20, 20), -0.5)
    sim[0, 3, 4] = -0.45  # argmax, near the corner
    geo = R.geoaware_soft_argmax(sim, window=2, beta=0.02)
    own = R.window_soft_argmax(sim, radius=2, temperature=0.02)
    assert (own - torch.tensor([[4.0, 3.0]])).abs().max() < 0.5
    assert (geo - torch.tensor([[9.5, 9.5]])).abs().max() < 0.5  # the 375 zeroed cells dominate


def test_geoaware_source_patch_is_the_one_containing_the_keypoint():
    from benchmarks.dense import patch_at

    g = load_file(str(golden("readouts", "geoaware.safetensors")))
    feat = torch.arange(3600, dtype=torch.float32).reshape(1, 60, 60)  # the cell index as its feature
    got = patch_at(feat, g["src_kps_840"], (840, 840))[:, 0].long()
    assert torch.equal(got, g["patch_idx"])


# ----------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("case", ["interior", "border"])
def test_loss_and_gradients(case):
    from sd4match.training.loss import gaussian_ce_loss

    f = load_file(str(golden("loss", "featmaps.safetensors")))
    c = load_file(str(golden("loss", f"{case}.safetensors")))
    src = f["src_featmaps"].clone().requires_grad_()
    trg = f["trg_featmaps"].clone().requires_grad_()
    K = c["src_kps"].shape[1]
    valid = torch.arange(K)[None] < c["npts"][:, None]
    # SD4Match's keypoints are in the 768 frame; grid = x / 767 * 23 (align corners), as it scales them
    loss = gaussian_ce_loss(src, trg, c["src_kps"] / 767 * 23, c["trg_kps"] / 767 * 23, valid)
    loss.backward()
    assert_rel(loss.detach().reshape(1), c["loss"], what="loss")
    assert_rel(src.grad, c["grad_src_featmaps"], what="d loss / d source maps")
    assert_rel(trg.grad, c["grad_trg_featmaps"], what="d loss / d target maps")


def test_loss_kernel_sum():
    from sd4match.training.loss import gaussian_window

    _, w = gaussian_window(7, 1.5)
    want = json.loads(golden("loss", "loss.json").read_text())["kernel_sum"]
    assert w.sum().item() == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------------------------- DINOv2
def test_dinov2_preprocessing_equals_hugging_face():
    """DINOv2's default image processor (short side 256 bicubic, long side truncated, centre crop 224)."""
    import transformers
    from PIL import Image

    from sd4match.backbones.dino import DinoSpec, preprocess

    from .conftest import shared

    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    proc = cls(do_resize=True, size={"shortest_edge": 256}, resample=Image.BICUBIC, do_center_crop=True,
               crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    files = sorted(shared("PF-WILLOW", "PF-dataset").glob("*/*.png"))
    assert len(files) == 100
    worst = 0.0
    for f in files:
        with Image.open(f) as im:
            want = proc(im, return_tensors="pt").pixel_values[0]
            got = preprocess(im, DinoSpec())
        worst = max(worst, (got - want).abs().max().item())
    assert worst < 1e-5, f"largest difference {worst:.3g}"


# ----------------------------------------------------------------------------------------------- determinism
def test_prompt_hash_ignores_file_metadata_order(tmp_path):
    """Re-saving the same prompt (safetensors metadata in another order) must not change seeds or cache keys."""
    from safetensors.torch import save_file

    from sd4match import checkpoint as ckpt
    from sd4match.prompts import SinglePrompt

    mod = SinglePrompt(8)
    mod.tokens.data.normal_()
    ckpt.save(mod, tmp_path / "a.safetensors", variant="single", text_width=8)
    _, meta = ckpt.read(tmp_path / "a.safetensors")
    tensors = {k: v.clone() for k, v in mod.state_dict().items()}
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=dict(reversed(list(meta.items()))))
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a != b  # the files differ in their bytes ...
    ha = ckpt.load(tmp_path / "a.safetensors", variant="single", text_width=8)[1]["sha256"]
    hb = ckpt.load(tmp_path / "b.safetensors", variant="single", text_width=8)[1]["sha256"]
    assert ha == hb  # ... but not in what the toolkit keys on
    mod.tokens.data[0, 0] += 1
    ckpt.save(mod, tmp_path / "c.safetensors", variant="single", text_width=8)
    assert ckpt.load(tmp_path / "c.safetensors", variant="single", text_width=8)[1]["sha256"] != ha
