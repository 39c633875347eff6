"""The README's Python example and examples/label_folder.py run as written on the demo model."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### From Python", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no ```python block under README's From Python"
    return m.group(1)


def test_the_readme_python_example_runs_as_written():
    code = readme_python_block()
    assert len(code.strip().splitlines()) <= 12
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # One line per image of images/, then the failures, then the shapes and argmaxes.
    n = len([f for f in (REPO / "images").iterdir() if f.suffix in (".png", ".jpg")])
    assert len(lines) == n + 2, p.stdout
    assert lines[n] == "failed: []"
    assert lines[n + 1].startswith("(2, ")


def test_examples_label_folder_runs():
    p = subprocess.run(
        [sys.executable, "examples/label_folder.py", "--min-score", "0.5"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert p.returncode == 0, p.stderr
    rows = [l.split("\t") for l in p.stdout.splitlines()]
    assert len(rows) > 0 and all(len(r) == 3 for r in rows)
    assert all(r[0].startswith("images/") for r in rows)
    assert "labelled" in p.stderr
