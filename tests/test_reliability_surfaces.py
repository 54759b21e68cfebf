"""Reliability of the newer surfaces: build-ap10k, leaderboard build and compare, and the
tracebacks left elsewhere. Each test injects the fault; the properties (hypothesis) check that any
input gives either a valid output obeying the value rules or a one-line error with exit 2, and
that nothing is ever written outside the output folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import loaders
from leaderboard.__main__ import main as lb_cli
from loaders.__main__ import main as loaders_cli
from loaders.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- AP-10K build
def _raw(tmp: Path, images_per_species: int = 5) -> tuple[list[Path], Path, Path]:
    """A small COCO-style AP-10K release: family F1 (species a, b), family F2 (species c)."""
    rng = np.random.default_rng(0)
    cats = [{"id": 1, "name": "a", "supercategory": "F1"}, {"id": 2, "name": "b", "supercategory": "F1"},
            {"id": 3, "name": "c", "supercategory": "F2"}]
    images, anns, n = [], [], 0
    (tmp / "data").mkdir(parents=True)
    for cat in (1, 2, 3):
        for _ in range(images_per_species):
            n += 1
            kp = []
            for _k in range(17):
                kp += [int(rng.integers(1, 60)), int(rng.integers(1, 40)), 2]
            images.append({"id": n, "file_name": f"{n:012d}.jpg", "width": 64, "height": 48})
            anns.append({"id": 1000 + n, "image_id": n, "category_id": cat, "bbox": [1, 1, 60, 40],
                         "num_keypoints": 17, "keypoints": kp})
            Image.new("RGB", (64, 48)).save(tmp / "data" / f"{n:012d}.jpg")
    coco = tmp / "ann.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    crowd = tmp / "crowd.txt"
    crowd.write_text("")
    return [coco], tmp / "data", crowd


def _build(files, data, crowd, out: Path) -> int:
    return loaders_cli(["build-ap10k", "--raw", str(data.parent), "--annotations", *map(str, files), "--crowd",
                        str(crowd), "--out", str(out)])


def _cells(line: str) -> int:
    """Cells of a Markdown table row: pipes not escaped with a backslash."""
    import re

    return len(re.findall(r"(?<!\\)\|", line))


def _tables(text: str) -> list[list[str]]:
    """The Markdown tables of a text: runs of consecutive lines starting with '|'."""
    out, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    return out


def _tree(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*")}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("field,value,msg", [
    ("supercategory", "../../../ESCAPED", "must be a name of letters"),
    ("name", "/tmp/absolute-species", "must be a name of letters"),
    ("supercategory", "", "must be a name of letters"),
    ("name", "..", "must be a name of letters"),
])
def test_ap10k_build_names_from_the_file_stay_inside_out(tmp_path, capsys, field, value, msg):
    files, data, crowd = _raw(tmp_path / "raw")
    coco = json.loads(files[0].read_text())
    coco["categories"][0][field] = value
    files[0].write_text(json.dumps(coco))
    before = _tree(tmp_path)
    assert _build(files, data, crowd, tmp_path / "work" / "out") == 2
    assert msg in _one_line_error(capsys)
    assert _tree(tmp_path) - before <= {"work"}  # nothing written anywhere, the (empty) parent at most
    assert not Path("/tmp/absolute-species").exists()


@pytest.mark.parametrize("edit,msg", [
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(2, 5), "visibility must be 0, 1 or 2"),
    (lambda c: c["images"][0].__setitem__("width", 0), "sides must be in"),
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(0, "12"), "not [x, y] numbers"),
    (lambda c: c["annotations"][0]["keypoints"].__setitem__(0, float("nan")), "not a finite pixel position"),
    (lambda c: c["annotations"][0].__setitem__("num_keypoints", "many"), "num_keypoints"),
    (lambda c: c["annotations"][0].__setitem__("bbox", [True, 1, 60, 40]), "bbox"),
])
def test_ap10k_build_applies_the_readers_rules_before_publishing(tmp_path, capsys, edit, msg):
    files, data, crowd = _raw(tmp_path / "raw")
    coco = json.loads(files[0].read_text())
    edit(coco)
    files[0].write_text(json.dumps(coco))  # NaN is written as the JSON literal NaN, which Python reads back
    assert _build(files, data, crowd, tmp_path / "out") == 2
    assert msg in _one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_concurrent_builds_publish_one_complete_dataset(tmp_path):
    files, data, crowd = _raw(tmp_path / "raw", images_per_species=12)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "loaders", "build-ap10k", "--raw", str(data.parent), "--annotations", str(files[0]),
           "--crowd", str(crowd), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sum(code == 0 for code, _ in results) >= 1
    for code, err in results:
        assert code in (0, 2) and (code == 0 or ("already exists" in err and err.count("\n") == 1)), err
    record = json.loads((out / "build.json").read_text())
    for folder, n in record["pairs"].items():  # what build.json claims is what was published
        assert len(list((out / "PairAnnotation" / folder).glob("*.json"))) == n
    assert loaders.load_uncached("ap-10k", out, "test").num_rows == record["pairs"]["test"]
    assert not list(tmp_path.glob(".out.building-*"))


def test_a_killed_builds_folder_is_removed_by_the_next_build(tmp_path):
    files, data, crowd = _raw(tmp_path / "raw")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.building-{int(dead.stdout)}-abcd"
    (stale / "PairAnnotation").mkdir(parents=True)
    assert _build(files, data, crowd, tmp_path / "out") == 0
    assert not stale.exists()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["name", "supercategory", "width", "height", "bbox", "num_keypoints", "kp_x", "kp_v",
                              "file_name", "image_id"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=12), st.lists(st.integers(-3, 70), max_size=5)))
def test_ap10k_build_any_field_gives_a_valid_dataset_or_one_line(tmp_path_factory, capsys, where, value):
    tmp = tmp_path_factory.mktemp("b")
    files, data, crowd = _raw(tmp / "raw", images_per_species=4)
    coco = json.loads(files[0].read_text())
    target = {"name": coco["categories"][1], "supercategory": coco["categories"][1], "width": coco["images"][0],
              "height": coco["images"][0], "file_name": coco["images"][0], "image_id": coco["annotations"][0],
              "bbox": coco["annotations"][0], "num_keypoints": coco["annotations"][0]}
    if where == "kp_x":
        coco["annotations"][0]["keypoints"][3] = value
    elif where == "kp_v":
        coco["annotations"][0]["keypoints"][5] = value
    else:
        target[where][where] = value
    files[0].write_text(json.dumps(coco))
    work = tmp / "work"
    work.mkdir()
    before = _tree(tmp)
    code = _build(files, data, crowd, work / "out")
    captured = capsys.readouterr()
    assert code in (0, 2)
    assert {p for p in _tree(tmp) - before if not p.startswith("work/out")} == set()  # nothing outside out
    if code == 2:
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert not (work / "out").exists()
    else:  # published: every split the build wrote reads back under the reader's rules
        for split in ("test", "test-cross-species", "test-cross-family"):
            folder = work / "out" / "PairAnnotation" / split.replace("-", "_")
            if any(folder.glob("*.json")):
                table = loaders.load_uncached("ap-10k", work / "out", split)
                assert all(len(k) >= 3 for k in table.column("kps_ids").to_pylist())


# ----------------------------------------------------------------------------------------------- leaderboard
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from benchmarks.run import main as run_cli
    from loaders.testing import write_spair_root

    d = tmp_path_factory.mktemp("lbrun")
    write_spair_root(d / "spair", {"test": 8}, seed=2)
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(d / "spair"), "--out",
                    str(d / "run"), "--quiet"]) == 0
    return d / "run"


def _copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


@pytest.mark.parametrize("col,value,msg", [
    ("ci_low", "abc", "column 'ci_low' must hold numbers"),
    ("split_pairs", "many", "column 'split_pairs' must hold numbers"),
    ("pck", "5", "column 'pck' must hold numbers in [0, 1]"),
])
def test_leaderboard_refuses_bad_numbers(run_dir, tmp_path, capsys, col, value, msg):
    bad = _copy_run(run_dir, tmp_path / "bad")
    df = pd.read_csv(bad / "results.csv")
    df[col] = df[col].astype(object)
    df.loc[0, col] = value
    df.to_csv(bad / "results.csv", index=False)
    assert lb_cli(["build", str(bad), "--out", str(tmp_path / "lb")]) == 2
    assert msg in _one_line_error(capsys)
    assert not (tmp_path / "lb").exists()


def test_leaderboard_refuses_inverted_intervals_and_impossible_published_numbers(run_dir, tmp_path, capsys):
    bad = _copy_run(run_dir, tmp_path / "bad")
    df = pd.read_csv(bad / "results.csv")
    row = df.index[df["ci_low"].notna()][0]
    df.loc[row, ["ci_low", "ci_high"]] = [0.9, 0.1]
    df.to_csv(bad / "results.csv", index=False)
    assert lb_cli(["build", str(bad), "--out", str(tmp_path / "lb")]) == 2
    assert "is inverted" in _one_line_error(capsys)
    rep = tmp_path / "rep.csv"
    from leaderboard.runs import read_reported

    published = read_reported().drop(columns=["kind", "weights", "random_weights", "partial", "source"])
    published = published.rename(columns={"run": "source"})
    published.loc[0, "pck"] = 5
    published.to_csv(rep, index=False)
    assert lb_cli(["build", str(run_dir), "--out", str(tmp_path / "lb"), "--reported", str(rep)]) == 2
    assert "column 'pck' must hold numbers in [0, 1]" in _one_line_error(capsys)
    rep.write_bytes(b"\xff\xfe\x00\x01binary")
    assert lb_cli(["build", str(run_dir), "--out", str(tmp_path / "lb"), "--reported", str(rep)]) == 2
    _one_line_error(capsys)
    no_note = tmp_path / "no-note.csv"  # a reported file without a note column is fine
    published.loc[0, "pck"] = 0.5
    published.drop(columns=["note"]).to_csv(no_note, index=False)
    assert lb_cli(["build", str(run_dir), "--out", str(tmp_path / "ok"), "--reported", str(no_note)]) == 0


@pytest.mark.parametrize("alpha", ["nan", "-1", "0", "inf", "x"])
def test_leaderboard_alpha_must_be_a_fraction(run_dir, tmp_path, alpha, capsys):
    with pytest.raises(SystemExit) as exc:
        lb_cli(["build", str(run_dir), "--out", str(tmp_path / "lb"), "--alpha", alpha])
    assert exc.value.code == 2 and "expected a number in (0, 1]" in capsys.readouterr().err


def test_same_folder_names_and_hostile_names(run_dir, tmp_path):
    a = _copy_run(run_dir, tmp_path / "x" / "run")
    b = _copy_run(run_dir, tmp_path / "y" / "run")
    evil = _copy_run(run_dir, tmp_path / "z" / "evil")
    df = pd.read_csv(evil / "results.csv")
    df["tta"] = "a | b\n| injected | row |"
    df.to_csv(evil / "results.csv", index=False)
    record = json.loads((evil / "run.json").read_text())
    record["provenance"]["label"] = "name | with pipe\nand newline"
    (evil / "run.json").write_text(json.dumps(record))
    assert lb_cli(["build", str(a), str(b), str(evil), "--out", str(tmp_path / "lb"), "--format", "md"]) == 0
    md = (tmp_path / "lb" / "spair-71k.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    rows = table[2:]
    assert len(rows) == 3 + 1  # the three runs and SD4Match-CPM's published row: nothing injected
    assert all(_cells(line) == _cells(table[0]) for line in rows)
    names = {line.split("|")[1].strip() for line in rows}
    assert len(names) == 4  # two folders named "run" with the same settings are told apart (by their run ids)


# ----------------------------------------------------------------------------------------------- compare
def _per_pair(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "per_pair.parquet")


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d.assign(fraction_correct=5.0), "fraction_correct must be in [0, 1]"),
    (lambda d: d.assign(fraction_correct=-0.5), "fraction_correct must be in [0, 1]"),
    (lambda d: d.assign(fraction_correct=float("nan")), "fraction_correct must be in [0, 1]"),
    (lambda d: pd.concat([d, d]), "appears twice"),
    (lambda d: d.assign(fraction_correct="high"), "must hold numbers"),
    (lambda d: d.drop(columns=["readout"]), "missing column(s) ['readout']"),
    (lambda d: d.assign(alpha=7.0), "alpha must be in (0, 1]"),
])
def test_compare_validates_per_pair_tables(run_dir, tmp_path, capsys, edit, msg):
    bad = _copy_run(run_dir, tmp_path / "bad")
    edit(_per_pair(bad)).to_parquet(bad / "per_pair.parquet")
    assert lb_cli(["compare", str(run_dir), str(bad)]) == 2
    assert msg in _one_line_error(capsys)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)), min_size=1,
                       max_size=8),
       dup=st.booleans())
def test_compare_any_per_pair_values(run_dir, tmp_path_factory, capsys, values, dup):
    bad = _copy_run(run_dir, tmp_path_factory.mktemp("c") / "bad")
    d = _per_pair(bad)
    d.loc[: len(values) - 1, "fraction_correct"] = values
    (pd.concat([d, d.iloc[:1]]) if dup else d).to_parquet(bad / "per_pair.parquet")
    code = lb_cli(["compare", str(run_dir), str(bad)])
    out = capsys.readouterr()
    if code == 2:
        assert out.err.startswith("error: ") and out.err.count("\n") == 1
        return
    assert code == 0
    numbers = [float(x) for line in out.out.splitlines()[4:] for x in line.split()[2:]]
    assert all(math.isfinite(v) for v in numbers)
    pck = [float(x) for line in out.out.splitlines()[4:] for x in line.split()[2:4]]
    assert all(0 <= v <= 100 for v in pck)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(col=st.sampled_from(["pck", "alpha", "ci_low", "ci_high", "n_pairs", "split_pairs", "readout", "tta",
                            "precision", "category", "dataset", "subset"]),
       value=st.one_of(st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6)))
def test_leaderboard_any_results_cell(run_dir, tmp_path_factory, capsys, col, value):
    tmp = tmp_path_factory.mktemp("l")
    bad = _copy_run(run_dir, tmp / "bad")
    df = pd.read_csv(bad / "results.csv")
    df[col] = df[col].astype(object)
    df.loc[0, col] = value
    df.to_csv(bad / "results.csv", index=False)
    before = _tree(tmp)
    code = lb_cli(["build", str(bad), "--out", str(tmp / "lb"), "--format", "md,csv,tex,html", "--figures", "png"])
    out = capsys.readouterr()
    assert code in (0, 2)
    assert {p for p in _tree(tmp) - before if not p.startswith("lb")} == set()  # nothing outside --out
    if code == 2:
        assert out.err.startswith("error: ") and out.err.count("\n") == 1
        return
    for f in (tmp / "lb").glob("*.md"):  # every Markdown table row has its header's number of cells
        for table in _tables(f.read_text()):
            assert {_cells(line) for line in table} == {_cells(table[0])}, f.name
    wide = next((tmp / "lb").glob("*-wide.csv"))
    values = pd.read_csv(wide).filter(regex="@").to_numpy(dtype=float)
    assert np.nanmin(values, initial=0) >= 0 and np.nanmax(values, initial=0) <= 100


# ----------------------------------------------------------------------------------------------- tracebacks elsewhere
@pytest.mark.parametrize("args,msg", [
    (["--matcher", "patch", "--set", "grid=0"], "grid must be in 2..1024"),
    (["--matcher", "patch", "--set", "grid=1"], "grid must be in 2..1024"),
    (["--matcher", "patch", "--set", "radius=-1"], "radius in 0..64"),
    (["--matcher", "dift", "--preset", "tiny", "--set", "prompt={x}"], "no other braces"),
    (["--matcher", "dift", "--preset", "tiny", "--set", "prompt=a {category"], "no other braces"),
])
def test_settings_that_used_to_raise(tmp_path, capsys, args, msg):
    from benchmarks.run import main as run_cli
    from loaders.testing import write_pfwillow_root

    write_pfwillow_root(tmp_path / "w", subsets=("car(G)",), n_images=3)
    assert run_cli([*args, "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"), "--out", str(tmp_path / "o")]) == 2
    assert msg in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_limit_beyond_the_split(run_dir, tmp_path, capsys):
    from benchmarks.run import main as run_cli

    spair = run_dir.parent / "spair"
    assert run_cli(["--matcher", "identity", "--dataset", "spair-71k", "--data-root", str(spair), "--limit",
                    str(2**63), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    res = pd.read_csv(tmp_path / "o" / "results.csv")
    res = res[res["keypoints"] == "all"]  # (the geometry-aware rows count the pairs that have such keypoints)
    assert set(res[res["category"] == "all"]["n_pairs"]) == {8} and set(res["subset"]) == {"all"}  # covers the split


def test_convert_out_folder_and_head_shapes(tmp_path, capsys):
    import torch

    from benchmarks.matchers.base import MatcherError
    from sd4match.convert import main as convert_cli
    from sd4match.methods.geoaware_head import AggregationHead, load_head

    src = tmp_path / "caption.pt"
    torch.save({"dataset": torch.zeros(1, 77, 32)}, src)
    (tmp_path / "dir").mkdir()
    assert convert_cli(["--variant", "single", "--input", str(src), "--out", str(tmp_path / "dir")]) == 2
    assert "--out is a folder" in _one_line_error(capsys)
    state = AggregationHead().state_dict()
    state["bottleneck_layers.0.0.conv2.weight"] = torch.zeros(192, 192, 1, 1)  # the authors' names, a wrong shape
    torch.save(state, tmp_path / "head.pth")
    with pytest.raises(MatcherError, match="does not fit the aggregation head") as exc:
        load_head(str(tmp_path / "head.pth"), "cpu")
    assert "\n" not in str(exc.value)


def test_training_on_a_full_disk_is_one_line_and_resumes(tmp_path, capsys, monkeypatch):
    import torch

    from loaders.testing import write_pfwillow_root
    from sd4match.train import main as train_cli

    write_pfwillow_root(tmp_path / "w", subsets=("car(G)",), n_images=3)
    base = ["--variant", "single", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(tmp_path / "w"),
            "--split", "test", "--out", str(tmp_path / "t"), "--quiet", "--max-steps", "4", "--set", "save_every=2"]
    real = torch.save
    calls = {"n": 0}

    def full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # the second checkpoint step hits a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    assert train_cli(base) == 2
    err = _one_line_error(capsys)
    assert "cannot write the checkpoint step" in err
    monkeypatch.setattr(torch, "save", real)
    assert train_cli([*base, "--resume"]) == 0
    assert json.loads((tmp_path / "t" / "config.json").read_text())["resumed_from_step"] == 2


# ----------------------------------------------------------------------------------------------- smaller
def test_pair_files_that_link_out_of_the_root_are_refused(tmp_path):
    from loaders.testing import write_spair_root

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 3}, seed=1)
    victim = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    outside = tmp_path / "outside.json"
    outside.write_text(victim.read_text())
    victim.unlink()
    victim.symlink_to(outside)
    with pytest.raises(DatasetError, match="resolves outside the dataset root"):
        loaders.load_uncached("spair-71k", root, "test")


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    from loaders.atomic import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".results.csv.{int(dead.stdout)}.abcdefgh.tmp"
    stale.write_text("half-written")
    mine = tmp_path / f".results.csv.{os.getpid()}.zzzzzzzz.tmp"  # a live writer's file stays
    mine.write_text("being written")
    write_text(tmp_path / "results.csv", "ok\n")
    assert not stale.exists() and mine.exists() and (tmp_path / "results.csv").read_text() == "ok\n"


def test_evaluate_overwrite_takes_the_folders_lock(run_dir, tmp_path, capsys):
    from benchmarks.evaluate import main as eval_cli
    from benchmarks.outlock import lock, unlock

    out = tmp_path / "ev"
    lock(out)  # another run or evaluation holds the folder
    try:
        assert eval_cli([str(run_dir / "predictions.parquet"), "--dataset", "spair-71k", "--data-root",
                         str(run_dir.parent / "spair"), "--out", str(out), "--overwrite"]) == 2
        assert "another run or evaluation is writing into this folder" in _one_line_error(capsys)
    finally:
        unlock()
    assert eval_cli([str(run_dir / "predictions.parquet"), "--dataset", "spair-71k", "--data-root",
                     str(run_dir.parent / "spair"), "--out", str(out), "--overwrite"]) == 0


def test_table_cache_sees_an_edit_that_keeps_size_and_mtime(tmp_path):
    from loaders.testing import write_spair_root

    root = tmp_path / "spair"
    write_spair_root(root, {"test": 3}, seed=1)
    cache = tmp_path / "cache"
    first = loaders.load("spair-71k", root, "test", cache_dir=cache)
    f = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    st = f.stat()
    text = f.read_text()
    ann = json.loads(text)
    x = ann["src_kps"][0][0]
    edited = text.replace(f"[{x}, ", f"[{(x + 1) % 10 if x < 10 else x - 1}, ", 1)
    assert len(edited) == len(text) and edited != text
    f.write_text(edited)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    again = loaders.load("spair-71k", root, "test", cache_dir=cache)
    assert again.column("src_kps").to_pylist() != first.column("src_kps").to_pylist()
