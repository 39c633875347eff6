"""Shared fixtures: the repository, the `cliplabel` binary to compare with, the demo model.

The binary is $CLIPLABEL_BIN, else target/release/cliplabel; if that is missing it is built
with `cargo build --release --bin cliplabel` (the extension shares that target/). A test
session without either fails with that said, rather than skipping the comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "shapes-clip"
IMAGES = REPO / "images"
BAD = REPO / "tests" / "fixtures" / "bad"
CRASHERS = REPO / "tests" / "fixtures" / "crashers"


@pytest.fixture(scope="session")
def cli() -> Path:
    env_bin = os.environ.get("CLIPLABEL_BIN")
    if env_bin:
        path = Path(env_bin)
        if not path.is_file():
            pytest.fail(f"CLIPLABEL_BIN={env_bin} is not a file")
        return path
    path = REPO / "target" / "release" / "cliplabel"
    if not path.is_file():
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.fail(
                f"{path} is missing and cargo is not on PATH: build the CLI with "
                "`cargo build --release` or set CLIPLABEL_BIN"
            )
        subprocess.run(
            [cargo, "build", "--release", "--bin", "cliplabel"], cwd=REPO, check=True
        )
    if not path.is_file():
        pytest.fail(f"{path} is still missing after `cargo build --release`")
    return path


def run_cli(cli: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Runs the CLI from the repository root (offline, no embedding cache)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(
        [str(cli), *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if ok and p.returncode != 0:
        raise AssertionError(f"cliplabel {' '.join(args)} failed:\n{p.stderr}")
    return p


def cli_error(p: subprocess.CompletedProcess) -> str:
    """The message of the CLI's `error: ...` line."""
    lines = [l for l in p.stderr.splitlines() if l.startswith("error: ")]
    assert p.returncode != 0 and lines, p.stderr
    return lines[-1][len("error: ") :]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="session")
def engine():
    import cliplabel

    return cliplabel.Engine(str(MODEL))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    # Paths as the CLI prints them are relative to the repository root, where it runs.
    monkeypatch.chdir(REPO)
