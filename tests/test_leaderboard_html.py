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

from .conftest import shared


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

    root = shared("PF-WILLOW")
    tmp = tmp_path_factory.mktemp("html")
    common = ["--dataset", "pf-willow", "--data-root", str(root), "--limit", "12", "--quiet"]
    assert run_main(["--matcher", "dift", "--preset", "tiny", "--out", str(tmp / "run-a"), *common]) == 0
    assert run_main(["--matcher", "patch", "--out", str(tmp / "run-b"), *common]) == 0
    # a hostile method label must reach the page as text, never as markup
    evil = tmp / "run-c"
    shutil.copytree(tmp / "run-b", evil)
    record = json.loads((evil / "run.json").read_text())
    record["provenance"]["label"] = "<img src=x onerror=\"document.title='pwned'\">"
    record["provenance"]["run_id"] = "abcdef0"
    (evil / "run.json").write_text(json.dumps(record))
    assert lb(["build", str(tmp / "run-a"), str(tmp / "run-b"), str(evil), "--out", str(tmp / "board"),
               "--format", "md,html", "--figures", "png"]) == 0
    return tmp / "board" / "index.html"


def _rows(d):
    return d.find_elements("css selector", "#board tbody tr")


def _col(d, name):
    heads = [th.get_attribute("data-key") for th in d.find_elements("css selector", "#board thead th")]
    i = heads.index(name)
    return [tr.find_elements("css selector", "td")[i].text for tr in _rows(d)]


def test_html_leaderboard_in_a_browser(board):
    from selenium.webdriver.support.ui import Select

    text = board.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from the network
    assert text.count("data:image/png;base64,") >= 1  # figures inline
    d = _browser()
    try:
        d.get(board.as_uri())
        # opens on the dataset's main protocol at alpha 0.1, stated with its comparison rule
        caption = d.find_element("id", "caption").text
        assert "PCK@0.1" in caption and "frame resized-768x768" in caption and "d ≤ alpha·T" in caption
        n_all = len(_rows(d))
        assert n_all == 5 + 5 + 5  # three runs x five readouts (dift and patch offer five each)
        assert d.title != "pwned" and not d.find_elements("css selector", "#board img")
        assert any("<img src=x" in m for m in _col(d, "Method"))  # shown as text
        # filter: one readout
        Select(d.find_element("id", "f-readout")).select_by_value("nn")
        assert set(_col(d, "Readout")) == {"nn"} and len(_rows(d)) == 3
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
        values = [float(v.split()[0]) for v in _col(d, "All")]
        assert values == sorted(values, reverse=True)
        d.find_element("css selector", "#board thead th[data-key='All']").click()
        values = [float(v.split()[0]) for v in _col(d, "All")]
        assert values == sorted(values)
        # intervals are shown beside All
        assert all("[" in v and "]" in v for v in _col(d, "All"))
        # another protocol table and alpha: the caption follows
        Select(d.find_element("id", "f-protocol")).select_by_value("original / bbox-kp / point")
        Select(d.find_element("id", "f-alpha")).select_by_value("0.05")
        caption = d.find_element("id", "caption").text
        assert "PCK@0.05" in caption and "aggregate point" in caption
        # hide partial runs: every run here is partial (--limit), so nothing is left, and the page says so
        d.find_element("id", "hide-partial").click()
        assert not _rows(d) and "No rows" in d.find_element("id", "empty").text
    finally:
        d.quit()


def test_html_page_is_deterministic(board, tmp_path):
    """The same runs give the same page, byte for byte."""
    from leaderboard.__main__ import main as lb

    runs = [str(board.parent.parent / r) for r in ("run-a", "run-b", "run-c")]
    assert lb(["build", *runs, "--out", str(tmp_path / "again"), "--format", "html", "--figures", "png"]) == 0
    assert (tmp_path / "again" / "index.html").read_bytes() == Path(board).read_bytes()
