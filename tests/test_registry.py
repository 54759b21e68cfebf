"""The matcher registry: listing, lookup errors, and third-party entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import registry
from benchmarks.matchers.base import ConfigError, Matcher

ROOT = Path(__file__).resolve().parents[1]


def test_every_builtin_imports_and_is_a_matcher():
    for name in registry.BUILTIN:
        cls = registry.load_class(name)
        assert issubclass(cls, Matcher) and cls.name == name and cls.description
        assert "tiny" in cls.presets


def test_unknown_name_lists_valid_and_closest():
    with pytest.raises(registry.UnknownMatcher) as info:
        registry.load_class("dfit")
    msg = str(info.value)
    assert "unknown matcher 'dfit' (did you mean 'dift'?)" in msg and "identity" in msg


def test_unknown_setting_and_preset():
    cls = registry.load_class("identity")
    with pytest.raises(ConfigError, match="matcher 'identity' has no setting 'alpha'; valid: batch_size, seed"):
        cls.from_settings(alpha=1)
    with pytest.raises(ConfigError, match="has no preset 'huge'; valid: tiny"):
        cls.from_settings("huge")


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    import numpy as np
    from benchmarks.matchers.base import Matcher, MatcherConfig

    @dataclass(frozen=True)
    class ShiftConfig(MatcherConfig):
        dx: float = 0.0

    class ShiftMatcher(Matcher):
        name = "shift"
        description = "source keypoints shifted by dx pixels"
        Config = ShiftConfig
        presets = {"tiny": {}}

        @property
        def readouts(self):
            return ("none",)

        def predict(self, pairs):
            return {"none": [p.src_kps + [self.config.dx, 0.0] for p in pairs]}
''')


def test_third_party_entry_point(tmp_path):
    """A package outside this repository registers a matcher through the entry-point group."""
    site = tmp_path / "site"
    (site / "shift_plugin").mkdir(parents=True)
    (site / "shift_plugin" / "__init__.py").write_text(PLUGIN)
    dist = site / "shift_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shift-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nshift = shift_plugin:ShiftMatcher\n")
    (dist / "top_level.txt").write_text("shift_plugin\n")
    from loaders.testing import write_pfwillow_root

    write_pfwillow_root(tmp_path / "w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--list-matchers"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "shift" in out.stdout and "source keypoints shifted by dx pixels" in out.stdout
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--matcher", "shift", "--set", "dx=3", "--dataset",
                          "pf-willow", "--data-root", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--quiet"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    import json

    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["config"]["dx"] == 3.0
    assert record["matcher_source"] == {"module": "shift_plugin", "class": "ShiftMatcher", "distribution": "shift-plugin",
                                        "version": "0.1"}
