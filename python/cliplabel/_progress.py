"""``progress=True``: a tqdm bar when tqdm is installed (``pip install tqdm``)."""

from __future__ import annotations

import warnings
from typing import Callable, Optional


class _Tqdm:
    """A callable(done, total) that drives a tqdm bar; ``close()`` ends it."""

    def __init__(self, desc: str) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._desc = desc
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = self._tqdm(total=total, desc=self._desc, unit="img")
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def tqdm_callback(desc: str) -> Optional[Callable[[int, int], None]]:
    try:
        return _Tqdm(desc)
    except ImportError:
        warnings.warn(
            "progress=True needs tqdm (pip install tqdm); running without a progress bar",
            stacklevel=3,
        )
        return None
