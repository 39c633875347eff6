"""The environment, read at the edge as the ``cliplabel`` binary reads it (src/cli/env.rs):
the Rust library never reads it, so the extension asks this module for the defaults.
"""

from __future__ import annotations

import os


def _offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE", "")
    return v != "" and v != "0" and v.lower() != "false"


def _hub_cache() -> str:
    # hf-hub's own rule (Cache::from_env): $HF_HOME/hub, else ~/.cache/huggingface/hub.
    home = os.environ.get("HF_HOME")
    if home:
        return os.path.join(home, "hub")
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _kernels() -> str:
    # As the binary: auto, avx512, avx2 or candle; unset or empty means auto (an unknown value
    # raises ValueError when the engine is built).
    return os.environ.get("CLIPLABEL_KERNELS", "").strip().lower() or "auto"


def hub_and_kernels() -> tuple[str, bool, str]:
    """(hub cache directory, offline, kernels) from the environment."""
    return _hub_cache(), _offline(), _kernels()


def set_threads(n: int) -> None:
    """candle's CPU kernels size their work by RAYON_NUM_THREADS, read on each call; the
    binary sets it from --threads, and so does Engine(threads=n)."""
    os.environ["RAYON_NUM_THREADS"] = str(int(n))
