"""cliplabel's exceptions, one class per kind of library error (``cliplabel::ErrorKind``).

The message of each is the one the ``cliplabel`` command prints after ``error:``; ``kind`` is
the kind's name ("model", "input", "output", "io" or "internal").
"""

from __future__ import annotations


class CliplabelError(Exception):
    """Base class of every error raised by cliplabel's Rust core."""

    #: "model", "input", "output", "io" or "internal".
    kind: str = "internal"


class ModelError(CliplabelError):
    """The model directory, checkpoint, tokenizer or hub id is unusable."""

    kind = "model"


class InputError(CliplabelError):
    """The inputs are unusable: images, prompts, class lists, labels, data sets, head files."""

    kind = "input"


class OutputError(CliplabelError):
    """An output could not be written safely (it exists, is not writable, is incomplete)."""

    kind = "output"


class IoError(CliplabelError, OSError):
    """Reading or writing a named file failed at the operating-system level.

    Also an :class:`OSError`: ``errno``, ``strerror`` and ``filename`` are set. Its message is
    cliplabel's (``PATH: reason``), not OSError's ``[Errno N] ...`` form.
    """

    kind = "io"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InternalError(CliplabelError):
    """A bug: an inconsistent computation or a run whose inputs do not add up."""

    kind = "internal"


__all__ = [
    "CliplabelError",
    "ModelError",
    "InputError",
    "OutputError",
    "IoError",
    "InternalError",
]
