"""Result bundles: pack, the schema, verification against the user's dataset copy, and faults
(a tampered number, a tampered prediction, a dropped pair, another dataset version, hostile
archives), each a one-line error or the first differing cell, nothing written anywhere."""

from __future__ import annotations

import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.run import main as run_cli
from leaderboard.__main__ import main as lb_cli
from leaderboard.bundle import MEMBERS, STAMP, read_bundle, sha256_bytes
from loaders.testing import write_pfwillow_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    root = d / "willow"
    write_pfwillow_root(root, subsets=("car(G)", "duck(S)"), n_images=3)
    run = d / "run"
    assert run_cli(["--matcher", "patch", "--preset", "tiny", "--dataset", "pf-willow", "--data-root", str(root),
                    "--out", str(run), "--quiet"]) == 0
    bundle = d / "patch.corrbench.zip"
    assert lb_cli(["pack", str(run), "--out", str(bundle)]) == 0
    return {"root": root, "run": run, "bundle": bundle, "dir": d}


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def _write(path: Path, members: dict[str, bytes], fix_checksums: bool = True, extra=()) -> Path:
    """A bundle with these members (bundle.json's checksums updated, as a careful forger would)."""
    members = dict(members)
    if fix_checksums:
        meta = json.loads(members["bundle.json"])
        meta["files"] = {n: {"sha256": sha256_bytes(members[n]), "bytes": len(members[n])} for n in meta["files"]}
        members["bundle.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in MEMBERS:
            if name in members:
                zf.writestr(zipfile.ZipInfo(name, date_time=STAMP), members[name], compress_type=zipfile.ZIP_DEFLATED)
        for info, data in extra:
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _verify(made, path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = lb_cli(["verify", str(path), "--data-root", str(made["root"])])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pack_writes_a_portable_bundle_that_validates(made, capsys):
    import jsonschema

    members = read_bundle(made["bundle"])
    assert sorted(members) == sorted(MEMBERS)
    schema = json.loads((ROOT / "leaderboard" / "data" / "bundle.schema.json").read_text())
    meta = json.loads(members["bundle.json"])
    jsonschema.validate(meta, schema)
    assert meta["schema_version"] == 1 and meta["dataset"] == "pf-willow" and meta["split"] == "test"
    assert meta["dataset_files"] and all(not k.endswith(".png") for k in meta["dataset_files"])  # no images
    assert any(k.endswith(".mat") for k in meta["dataset_files"])
    for name, data in members.items():  # no absolute path of the machine that made it
        assert str(made["dir"]).encode() not in data and str(Path.home()).encode() + b"/" not in data, name
    # the same run packs to the same bytes; the size is printed
    again = made["dir"] / "again.corrbench.zip"
    assert lb_cli(["pack", str(made["run"]), "--out", str(again)]) == 0
    assert f"({again.stat().st_size:,} bytes)" in capsys.readouterr().out
    assert again.read_bytes() == made["bundle"].read_bytes()
    # a schema that can fail: a bundle.json without its version does not validate
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in meta.items() if k != "schema_version"}, schema)


def test_verify_accepts_the_bundle_and_the_run_folder(made, capsys):
    code, out, _ = _verify(made, made["bundle"], capsys)
    assert code == 0 and out.startswith("verified: ")
    code, out, _ = _verify(made, made["run"], capsys)
    assert code == 0


def test_a_tampered_number_is_named(made, tmp_path, capsys):
    members = read_bundle(made["bundle"])
    df = pd.read_csv(io.BytesIO(members["results.csv"]), dtype={"category": str})
    i = df.index[(df.category == "all") & (df.protocol == "sd4match") & (df.alpha == 0.1)][0]
    claimed = df.at[i, "pck"]
    df.at[i, "pck"] = min(1.0, claimed + 0.05)
    members["results.csv"] = df.to_csv(index=False).encode()
    code, out, _ = _verify(made, _write(tmp_path / "t.corrbench.zip", members), capsys)
    assert code == 1 and out.startswith("DIFFERS: ")
    assert "protocol sd4match" in out and "category all" in out and "alpha 0.1" in out and "pck: claimed" in out
    # the same edit without mending bundle.json is caught by the member checksum
    members = read_bundle(made["bundle"])
    members["results.csv"] = df.to_csv(index=False).encode()
    code, _, err = _verify(made, _write(tmp_path / "u.corrbench.zip", members, fix_checksums=False), capsys)
    assert code == 2 and "does not match its sha256" in err and err.count("\n") == 1


def test_a_tampered_prediction_and_a_dropped_pair_are_caught(made, tmp_path, capsys):
    members = read_bundle(made["bundle"])
    pred = pd.read_parquet(io.BytesIO(members["predictions.parquet"]))
    pred.at[0, "pred_kps"] = [[float(x) + 37.0 for x in xy] for xy in pred.at[0, "pred_kps"]]
    members["predictions.parquet"] = _parquet(pred)
    code, out, _ = _verify(made, _write(tmp_path / "p.corrbench.zip", members), capsys)
    assert code == 1 and "DIFFERS" in out
    members = read_bundle(made["bundle"])
    pp = pd.read_parquet(io.BytesIO(members["per_pair.parquet"]))
    gone = pp.pair_id.iloc[0]
    members["per_pair.parquet"] = _parquet(pp[pp.pair_id != gone])
    code, out, _ = _verify(made, _write(tmp_path / "d.corrbench.zip", members), capsys)
    assert code == 1 and repr(gone) in out


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def test_another_dataset_version_is_refused_naming_the_file(made, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(made["root"], other)
    mat = sorted(other.rglob("*.mat"))[0]
    mat.write_bytes(mat.read_bytes() + b"\0")
    capsys.readouterr()
    assert lb_cli(["verify", str(made["bundle"]), "--data-root", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and mat.name in err and "another dataset version" in err


def _hostile(name: str, tmp_path: Path, made) -> Path:
    members = read_bundle(made["bundle"])
    path = tmp_path / f"{name}.corrbench.zip"
    if name == "escape":
        _write(path, members, extra=[(zipfile.ZipInfo("../../escaped.txt", date_time=STAMP), b"x")])
    elif name == "symlink":
        info = zipfile.ZipInfo("results.csv", date_time=STAMP)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        del members["results.csv"]
        _write(path, members, fix_checksums=False, extra=[(info, b"/etc/passwd")])
    elif name == "bomb":
        del members["results.csv"]
        _write(path, members, fix_checksums=False, extra=[(zipfile.ZipInfo("results.csv", date_time=STAMP), b"0" * (60 << 20))])
    elif name == "duplicate":
        _write(path, members, extra=[(zipfile.ZipInfo("run.json", date_time=STAMP), b"{}")])
    elif name == "not-a-zip":
        path.write_bytes(b"PK\x03\x04 truncated")
    return path


@pytest.mark.parametrize("name,msg", [("escape", "unexpected member '../../escaped.txt'"),
                                      ("symlink", "is not a regular file"),
                                      ("bomb", "refused as a zip bomb"),
                                      ("duplicate", "appears twice"),
                                      ("not-a-zip", "not a readable zip archive"),
                                      ("oversized", "declares")])
def test_hostile_archives_are_one_line_errors_and_write_nothing(made, tmp_path, capsys, monkeypatch, name, msg):
    import leaderboard.bundle as B

    if name == "oversized":
        monkeypatch.setattr(B, "MAX_MEMBER", 1000)
        path = made["bundle"]
    else:
        path = _hostile(name, tmp_path, made)
    before = _tree(tmp_path.parent), _tree(made["root"])
    code, out, err = _verify(made, path, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    assert (_tree(tmp_path.parent), _tree(made["root"])) == before
    assert not (tmp_path.parent.parent / "escaped.txt").exists()


def test_pack_refuses_what_it_cannot_make_portable(made, tmp_path, capsys):
    assert lb_cli(["pack", str(made["run"]), "--out", str(tmp_path / "x.zip")]) == 2
    assert "ends with .corrbench.zip" in capsys.readouterr().err
    assert lb_cli(["pack", str(tmp_path), "--out", str(tmp_path / "x.corrbench.zip")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
    assert lb_cli(["pack", str(made["run"]), "--out", str(tmp_path / "y.corrbench.zip"), "--data-root",
                   str(tmp_path / "nowhere")]) == 2
    assert "is not here; pass --data-root" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.zip"))


def test_the_leaderboard_takes_bundles_and_marks_what_it_verified(made, tmp_path, capsys):
    out = tmp_path / "lb"
    assert lb_cli(["build", str(made["bundle"]), "--out", str(out), "--format", "md,csv"]) == 0
    md = (out / "pf-willow.md").read_text()
    wide = pd.read_csv(out / "pf-willow-wide.csv")
    assert set(wide[wide.kind == "measured"].status) == {"unverified"}
    assert "status unverified" in md or "unverified" in md
    assert lb_cli(["build", str(made["bundle"]), "--out", str(tmp_path / "v"), "--format", "md,csv", "--verify",
                   "--data-root", str(made["root"])]) == 0
    wide = pd.read_csv(tmp_path / "v" / "pf-willow-wide.csv")
    assert set(wide[wide.kind == "measured"].status) == {"verified"}
    assert set(wide[wide.kind == "reported"].status) <= {"reported"}
    # a bundle whose numbers do not follow from its predictions is refused by --verify
    members = read_bundle(made["bundle"])
    df = pd.read_csv(io.BytesIO(members["results.csv"]), dtype={"category": str})
    df.loc[0, "pck"] = min(1.0, df.loc[0, "pck"] + 0.1)
    members["results.csv"] = df.to_csv(index=False).encode()
    forged = _write(tmp_path / "forged.corrbench.zip", members)
    capsys.readouterr()
    assert lb_cli(["build", str(forged), "--out", str(tmp_path / "f"), "--verify", "--data-root", str(made["root"])]) == 2
    assert "does not verify" in capsys.readouterr().err and not (tmp_path / "f").exists()
    # two bundles with one run id and different numbers: both shown, flagged, never merged
    assert lb_cli(["build", str(made["bundle"]), str(forged), "--out", str(tmp_path / "c"), "--format", "csv"]) == 0
    assert "conflict:" in capsys.readouterr().err
    wide = pd.read_csv(tmp_path / "c" / "pf-willow-wide.csv")
    meas = wide[wide.kind == "measured"]
    assert set(meas.status) == {"conflict"} and meas.run.nunique() == 2
    assert lb_cli(["build", str(made["bundle"]), "--out", str(tmp_path / "x"), "--verify"]) == 2


def test_the_page_filters_by_status_and_links_each_run_to_its_provenance(made, tmp_path):
    from .test_leaderboard_html import _browser, _col

    out = tmp_path / "page"
    assert lb_cli(["build", str(made["bundle"]), str(made["run"]), "--out", str(out), "--format", "html", "--figures",
                   "png", "--verify", "--data-root", str(made["root"])]) == 0
    html = (out / "index.html").read_text()
    assert str(made["dir"]) not in html  # no local path in a page meant to be shared
    from selenium.webdriver.support.ui import Select

    d = _browser()
    try:
        d.get((out / "index.html").as_uri())
        assert "verified" in [o.get_attribute("value") for o in Select(d.find_element("id", "f-status")).options]
        Select(d.find_element("id", "f-status")).select_by_value("verified")
        links = d.find_elements("css selector", "#board tbody td a")
        assert links and all(a.get_attribute("href").split("#")[1].startswith("prov-") for a in links)
        target = d.find_element("id", links[0].get_attribute("href").split("#")[1])
        assert '"provenance"' in target.find_element("css selector", "pre").get_attribute("textContent")
        assert "(verified)" in target.find_element("css selector", "summary").get_attribute("textContent")
        assert len(set(a.get_attribute("href") for a in links)) == 2  # the bundle and the run folder, one block each
        assert set(_col(d, "Status") or ["verified"]) == {"verified"}
    finally:
        d.quit()


def test_every_reported_row_names_its_source_and_a_complete_protocol():
    import re

    df = pd.read_csv(ROOT / "leaderboard" / "data" / "reported.csv", dtype=str, keep_default_na=False)
    need = ["method", "dataset", "split", "protocol", "threshold", "frame", "aggregate", "readout", "alpha", "strict",
            "tta", "training", "source"]
    assert not [c for c in need if c not in df.columns]
    for i, r in df.iterrows():
        where = f"reported.csv row {i + 2} ({r['method']}, {r['dataset']})"
        assert all(r[c].strip() for c in need), where
        assert r["threshold"] in ("bbox", "img", "bbox-kp", "unconfirmed"), where
        assert re.fullmatch(r"original|isotropic|resized-\d+x\d+|unconfirmed", r["frame"]), where
        assert r["aggregate"] in ("image", "point", "category", "unconfirmed"), where
        assert r["strict"] in ("yes", "no", "unconfirmed") and 0 < float(r["alpha"]) <= 1, where
        if r["protocol"] == "geoaware":
            assert r["strict"] == "yes", where
        if r["protocol"] in ("sd4match", "dift", "original"):
            assert r["strict"] == "no", where
        if "unconfirmed" in [r[c] for c in ("threshold", "frame", "aggregate", "readout", "strict", "tta")]:
            assert "UNCONFIRMED" in r["note"], f"{where}: an unconfirmed field needs a note saying what is not known"
    for method in ("GeoAware-SC supervised", "DIY-SC", "JamaisVu", "Unified-SC DINOv2 (last two blocks fine-tuned)",
                   "DistillDIFT", "DistillDIFT (threshold fixed)"):
        assert method in set(df.method), method
    row = df[(df.method == "GeoAware-SC supervised") & (df.dataset == "spair-71k")].iloc[0]
    assert (row["pck"], row["aggregate"], row["threshold"], row["readout"]) == ("0.856", "image", "bbox", "geoaware-soft-argmax")
