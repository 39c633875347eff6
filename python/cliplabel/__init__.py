"""cliplabel: label images with CLIP from Python, with the Rust core of the ``cliplabel`` CLI.

Same numbers as the CLI (and so as Hugging Face transformers' CLIPModel and Pillow), the same
guarantees (every image is labelled or listed as failed with a reason), numpy arrays in and
out, and the GIL released while Rust works::

    import cliplabel

    engine = cliplabel.Engine("models/shapes-clip")
    zs = cliplabel.ZeroShot(engine, ["red circle", "blue square"], templates="shapes")
    run = zs.label("images/", top_k=2)
    for r in run:
        print(r.path, r.label, r.score)
    print(run.failed)  # [(path, reason), ...]

- :class:`Engine`: a CLIP model (local directory or Hugging Face cache id);
  ``embed_images``, ``embed_texts``, ``embed_pixels``.
- :class:`ZeroShot`: prompts per class; ``label`` (an iterator of :class:`Label`) and
  ``scores``.
- :class:`Head`: a linear head (``Head.fit``, ``Head.load``, ``predict``, ``scores``).
- :func:`compare`: zero-shot against k-shot heads on a labelled test set, as a dict.
- Errors: :class:`CliplabelError` and its subclasses :class:`ModelError`,
  :class:`InputError`, :class:`OutputError`, :class:`IoError` (also an ``OSError``) and
  :class:`InternalError`, with the CLI's messages.
"""

from __future__ import annotations

from ._errors import (
    CliplabelError,
    InputError,
    InternalError,
    IoError,
    ModelError,
    OutputError,
)
from ._cliplabel import (
    DEFAULT_MAX_PIXELS,
    EmbedResult,
    Engine,
    Head,
    Label,
    LabelRun,
    ZeroShot,
    __version__,
    compare,
    load_rgb,
    template_sets,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CliplabelError",
    "EmbedResult",
    "Engine",
    "Head",
    "InputError",
    "InternalError",
    "IoError",
    "Label",
    "LabelRun",
    "ModelError",
    "OutputError",
    "ZeroShot",
    "__version__",
    "compare",
    "load_rgb",
    "template_sets",
]
