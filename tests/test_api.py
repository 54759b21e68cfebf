"""The Python API block of docs/running.md, run as written (from the repository root, on real PF-Willow)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .conftest import shared

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_block_runs_as_written(monkeypatch, capsys):
    shared("PF-WILLOW")
    text = (ROOT / "docs" / "running.md").read_text()
    block = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ROOT)
    if not (ROOT.parent / "shared").exists():  # the block names ../shared/data as the README's main job does
        block = block.replace("../shared/data", os.environ.get("CORRBENCH_SHARED_DATA", "../shared/data"))
    scope: dict = {}
    exec(compile(block, "docs/running.md", "exec"), scope)
    df = scope["df"]
    assert {"readout", "alpha", "pck", "ci_low", "ci_high", "protocol"} <= set(df.columns)
    assert set(df.readout) == {"nn", "kernel-soft-argmax"} and set(df.protocol) == {"sd4match"}
    assert (df[df.category == "all"].n_pairs == 20).all()
    assert "kernel-soft-argmax" in capsys.readouterr().out


def test_evaluate_one_call_equals_the_cli(tmp_path):
    import pandas as pd

    from benchmarks import api
    from benchmarks.run import main as run_cli

    root = shared("PF-WILLOW")
    out = tmp_path / "run"
    assert run_cli(["--matcher", "identity", "--dataset", "pf-willow", "--data-root", str(root), "--out", str(out),
                    "--quiet", "--protocol", "sd4match"]) == 0
    table = api.load_dataset("pf-willow", root)
    from_file = api.evaluate(out / "predictions.parquet", table, "sd4match")
    cli = pd.read_csv(out / "results.csv")
    np.testing.assert_allclose(from_file.sort_values(["category", "alpha"]).pck.to_numpy(),
                               cli.sort_values(["category", "alpha"]).pck.to_numpy(), atol=1e-6)  # CSV keeps 6 digits
    m = api.matcher("identity")
    preds = api.predict(m, table, root)
    again = api.evaluate(preds, table, "sd4match", alphas=(0.1,))
    assert set(again.alpha) == {0.1}
    assert np.isclose(again[again.category == "all"].pck.iloc[0],
                      cli[(cli.category == "all") & (cli.alpha == 0.1)].pck.iloc[0])
