"""The HTML leaderboard in a real headless browser (Chromium from the distribution's packages,
driven by selenium): filters, toggles, sorting and what the page states.

The browser is required where ``CORRBENCH_REQUIRE_BROWSER`` is set (``.ci/run`` sets it and installs
Chromium); elsewhere the test is skipped with the reason when Chromium or its driver is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not chromium or not driver:
        why = "Chromium, chromedriver or selenium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CORRBENCH_REQUIRE_BROWSER"):
            pytest.fail(why + "; CORRBENCH_REQUIRE_BROWSER is set")
        pytest.skip(why)
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from benchmarks.run import main as run_main
    from leaderboard.__main__ import main as lb
    from loaders.testing import write_pfwillow_root

    tmp = tmp_path_factory.mktemp("html")
    root = tmp / "willow"
    write_pfwillow_root(root, subsets=("car(G)",), n_images=4)  # 12 pairs: full runs stay small
    common = ["--dataset", "pf-willow", "--data-root", str(root), "--quiet"]
    assert run_main(["--matcher", "dift", "--preset", "tiny", "--out", str(tmp / "run-a"), *common]) == 0
    assert run_main(["--matcher", "patch", "--out", str(tmp / "run-b"), *common]) == 0
    assert run_main(["--matcher", "patch", "--set", "radius=4", "--limit", "5", "--out", str(tmp / "run-d"), *common]) == 0
    # hostile method labels must reach the page as text, never as markup
    evil = tmp / "run-c"
    shutil.copytree(tmp / "run-b", evil)
    record = json.loads((evil / "run.json").read_text())
    record["provenance"]["label"] = "<!--<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
    record["provenance"]["run_id"] = "abcdef0"
    (evil / "run.json").write_text(json.dumps(record))
    assert lb(["build", str(tmp / "run-a"), str(tmp / "run-b"), str(evil), str(tmp / "run-d"), "--out", str(tmp / "board"),
               "--format", "md,html", "--figures", "png", "--mixed-pairs"]) == 0
    return tmp / "board" / "index.html"


def _rows(d):
    return d.find_elements("css selector", "#board tbody tr")


def _col(d, name):
    heads = [th.get_attribute("data-key") for th in d.find_elements("css selector", "#board thead th")]
    if name not in heads:
        return []
    i = heads.index(name)
    return [tr.find_elements("css selector", "td")[i].text for tr in _rows(d)]


def _score(v):
    return float(v.split()[0])


def test_html_leaderboard_in_a_browser(board):
    from selenium.webdriver.support.ui import Select

    text = board.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    assert text.count("data:image/png;base64,") >= 1  # figures inline
    assert "<!--" not in text.split("<script id=\"data\"", 1)[1]  # the hostile comment opener is escaped
    d = _browser()
    try:
        d.get(board.as_uri())
        # the default view a reviewer reads: the main protocol at alpha 0.1 with its rule, one row per
        # method at its own readout, full runs only, sorted by score, the interval on one line
        caption = d.find_element("id", "caption").text
        assert "PCK@0.1" in caption and "frame resized-768x768" in caption and "d ≤ alpha·T" in caption
        assert "own readout" in caption
        assert d.title != "pwned" and not d.find_elements("css selector", "#board img")
        methods = _col(d, "Method")
        assert len(methods) == 3 and any("<!--<script>" in m for m in methods)  # shown as text
        assert not any("partial" in m for m in methods)
        assert set(_col(d, "Readout")) == {"upsampled-nn", "nn"}  # dift's own readout; patch's own (nn)
        values = [_score(v) for v in _col(d, "All")]
        assert values == sorted(values, reverse=True)
        assert all(" ± " in v and "\n" not in v for v in _col(d, "All"))
        assert [o.text for o in Select(d.find_element("id", "f-protocol")).options if o.get_attribute("value")
                == "resized-768x768 / bbox-kp / image"] == ["sd4match"]  # protocol tables named by their presets
        # the partial run is one click away, marked in its name
        d.find_element("id", "hide-partial").click()
        methods = _col(d, "Method")
        assert len(methods) == 4 and sum("partial: first 5 of 12" in m for m in methods) == 1
        assert "not ranked" in d.find_element("id", "caption").text  # different pair sets: no bold
        assert not d.find_elements("css selector", "#board td.best")
        d.find_element("id", "hide-partial").click()
        # every readout, then one readout
        Select(d.find_element("id", "f-readout")).select_by_value("")
        n_all = len(_rows(d))
        assert n_all == 5 + 5 + 5  # three full runs x five readouts (dift and patch offer five each)
        Select(d.find_element("id", "f-readout")).select_by_value("nn")
        assert set(_col(d, "Readout")) == {"nn"} and len(_rows(d)) == 3
        # the best readout is a selection on the test split: said on each row and in the caption
        Select(d.find_element("id", "f-readout")).select_by_value("best")
        assert len(_rows(d)) == 3 and all(r.endswith(" *") for r in _col(d, "Readout"))
        assert "selected on the test split" in d.find_element("id", "caption").text
        Select(d.find_element("id", "f-readout")).select_by_value("nn")
        # toggle: hide random-weight rows (the tiny DIFT run)
        d.find_element("id", "hide-random").click()
        methods = _col(d, "Method")
        assert len(methods) == 2 and not any("random weights" in m for m in methods)
        d.find_element("id", "hide-random").click()
        Select(d.find_element("id", "f-readout")).select_by_value("")
        assert len(_rows(d)) == n_all
        # the random-weight rows say so in the table itself
        assert any("random weights: tiny" in m for m in _col(d, "Method"))
        # sorting: All, descending on the first click, ascending on the second
        d.find_element("css selector", "#board thead th[data-key='Method']").click()
        d.find_element("css selector", "#board thead th[data-key='All']").click()
        values = [_score(v) for v in _col(d, "All")]
        assert values == sorted(values, reverse=True)
        d.find_element("css selector", "#board thead th[data-key='All']").click()
        values = [_score(v) for v in _col(d, "All")]
        assert values == sorted(values)
        # the interval itself on hover
        cell = d.find_elements("css selector", "#board tbody tr td.ci, #board tbody tr td")
        assert any((c.get_attribute("title") or "").startswith("95% interval [") for c in cell)
        # another protocol table and alpha: the caption follows
        Select(d.find_element("id", "f-protocol")).select_by_value("original / bbox-kp / point")
        Select(d.find_element("id", "f-alpha")).select_by_value("0.05")
        caption = d.find_element("id", "caption").text
        assert "PCK@0.05" in caption and "aggregate point" in caption
    finally:
        d.quit()


def test_html_page_is_deterministic(board, tmp_path):
    """The same runs give the same page, byte for byte."""
    from leaderboard.__main__ import main as lb

    runs = [str(board.parent.parent / r) for r in ("run-a", "run-b", "run-c", "run-d")]
    assert lb(["build", *runs, "--out", str(tmp_path / "again"), "--format", "md,html", "--figures", "png",
               "--mixed-pairs"]) == 0
    assert (tmp_path / "again" / "index.html").read_bytes() == Path(board).read_bytes()
