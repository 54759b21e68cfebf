"""The docs cannot drift: every command in a ```bash block of the README and of docs/*.md runs here,
offline, in the order shown (set-up lines, ``pip`` / ``apt-get``, and the test command itself are
left to ``.ci/run``); a ```text output block right after a command is compared with what the
command prints (numbers within 5 %); the example leaderboard is remade by its script and compared
with the copies the docs show. Synopsis lines with placeholders live in ```text blocks, which are
not run. Commands run in a temporary folder beside a link to ``../shared``, as on this project's
machines; the test skips with the reason where ``../shared/data`` is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: set-up and the test command: run by .ci/run, not from here
SETUP = ("pip ", "apt-get ", "python -m pytest")


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced block, in order."""
    out, info, body = [], None, []
    for line in text.splitlines():
        if info is None and line.startswith("```"):
            info, body = line[3:].strip(), []
        elif info is not None and line.startswith("```"):
            out.append((info, body))
            info = None
        elif info is not None:
            body.append(line)
    assert info is None, "a fenced block is not closed"
    return out


def commands(lines: list[str]) -> list[str]:
    """One command per logical line (continuations joined, trailing comments dropped)."""
    out, cur = [], ""
    for line in lines:
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        cur = re.sub(r"\s+#\s.*$", "", cur).strip()
        if cur:
            out.append(cur)
        cur = ""
    return out


def plan(page: Path) -> list[tuple[str, list[str] | None]]:
    """(command, expected output lines or None) to run for a page."""
    steps: list[tuple[str, list[str] | None]] = []
    for info, body in blocks(page.read_text()):
        if info == "bash":
            steps += [(c, None) for c in commands(body) if not c.startswith(SETUP)]
        elif info == "text output":
            assert steps, f"{page.name}: an output block with no command before it"
            steps[-1] = (steps[-1][0], body)
    return steps


def test_the_docs_show_no_runnable_placeholders():
    """Synopsis lines (capitals or brackets as placeholders) are never in a ```bash block."""
    for page in PAGES:
        for info, body in blocks(page.read_text()):
            if info != "bash":
                continue
            for c in commands(body):
                assert not re.search(r"\[--|\b(NAME|DIR|OUT\d?|HEX|RUN_[AB])\b(?!=)|(?<!shared)/data/|/models/|--device cuda", c), \
                    f"{page.name}: {c!r} is a synopsis or needs what this machine lacks: show it in a ```text block"
    assert len(PAGES) >= 5 and sum(1 for line in (ROOT / "README.md").read_text().splitlines()) <= 250


def _numbers(lines: list[str]) -> list[float]:
    return [float(x) for line in lines for x in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", line)]


def _compare_output(cmd: str, want: list[str], got: str) -> None:
    rows = [line for line in got.splitlines() if line.strip()]
    head = want[0].split()
    start = next((i for i, line in enumerate(rows) if line.split() == head), None)
    assert start is not None, f"{cmd}: the output has no line {want[0]!r}"
    shown = rows[start:start + len(want)]
    assert [line.split()[:2] for line in shown[1:]] == [line.split()[:2] for line in want[1:]], (cmd, shown)
    a, b = _numbers(shown), _numbers(want)
    assert len(a) == len(b) and all(abs(x - y) <= 0.05 * abs(y) for x, y in zip(a, b)), \
        f"{cmd}: the docs show {want}, the command printed {shown}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_offline_command_runs(page, tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    steps = plan(page)
    if not steps:
        pytest.skip(f"{page.name} shows no runnable command")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    (work / "docs").symlink_to(ROOT / "docs")  # scripts the docs call by their path
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MPLBACKEND": "Agg"}
    env.pop("CORRBENCH_DATA", None)
    for cmd, want in steps:
        m = re.fullmatch(r"export (\w+)=(\S+)", cmd)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        run = cmd.replace("python -m ", f"{sys.executable} -m ", 1) if cmd.startswith("python -m ") else cmd
        proc = subprocess.run(run, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600,
                              executable="/bin/bash")
        assert proc.returncode == 0, f"{page.name}: {cmd!r} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        if want is not None:
            _compare_output(cmd, want, proc.stdout)
    if page.name == "leaderboards.md":  # the example the docs (and the README) show, remade
        made = work / "example-check"
        for name in ("pf-willow.md", "pf-willow.tex"):
            assert (made / name).read_text() == (ROOT / "docs" / "leaderboard-example" / name).read_text(), name
        text = page.read_text()
        assert (made / "pf-willow.tex").read_text() in text and (made / "pf-willow.md").read_text().split("\n", 2)[2] in text
        rows = {_cells(line) for line in (made / "pf-willow.md").read_text().splitlines() if line.startswith("| ")}
        readme = [line for line in (ROOT / "README.md").read_text().splitlines()
                  if line.startswith("| ") and "[partial: sample 100" in line]
        assert readme and all(_cells(line) in rows for line in readme), "the README's example table drifted"


def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))
