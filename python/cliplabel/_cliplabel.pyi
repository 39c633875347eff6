"""Type stubs of the extension cliplabel._cliplabel (python/src/lib.rs); the docstrings at run
time come from the Rust side (help(cliplabel.Engine))."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

StrPath = Union[str, "os.PathLike[str]"]
Paths = Union[StrPath, Iterable[StrPath]]
Progress = Union[None, bool, Callable[[int, int], Any]]
Features = Literal["projected", "pooled"]

__version__: str
DEFAULT_MAX_PIXELS: int

class Engine:
    """A CLIP model ready to embed images and prompts (a local model directory or a Hugging
    Face hub id, as the CLI's --model). Raises ModelError when it cannot be loaded."""

    def __init__(
        self,
        model: StrPath,
        threads: Optional[int] = None,
        batch_size: int = 32,
        precision: Literal["fp32", "bf16", "int8"] = "fp32",
        *,
        max_pixels: Optional[int] = None,
        hub_cache: Optional[StrPath] = None,
        offline: Optional[bool] = None,
        kernels: Optional[Literal["auto", "avx512", "avx2", "candle"]] = None,
    ) -> None: ...
    @property
    def model(self) -> str:
        """The model as given."""
    @property
    def fingerprint(self) -> str:
        """A fingerprint of the model files."""
    @property
    def dim(self) -> int:
        """Width of the projected embeddings."""
    @property
    def precision(self) -> Literal["fp32", "bf16", "int8"]:
        """The precision the encoders run in (the one asked for, or the CPU's fallback)."""
    @property
    def batch_size(self) -> int:
        """Images per model batch."""
    def embed_images(
        self, paths: Paths, progress: Progress = None, features: Features = "projected"
    ) -> EmbedResult:
        """Embeds image files (files and directories, walked as the CLI walks them); every
        image ends in EmbedResult.paths or EmbedResult.failed."""
    def embed_texts(self, texts: Union[str, Sequence[str]]) -> npt.NDArray[np.float32]:
        """Embeds prompts: float32 [n, dim]."""
    def embed_pixels(
        self, pixels: npt.NDArray[np.uint8], features: Features = "projected"
    ) -> npt.NDArray[np.float32]:
        """Embeds uint8 RGB images [H, W, 3] or [N, H, W, 3] already in memory: float32
        [N, dim], preprocessed exactly as a decoded file."""

class EmbedResult:
    """Engine.embed_images' result: row i of ``embeddings`` is ``paths[i]``; images that
    could not be embedded are in ``failed`` as (path, reason)."""

    @property
    def embeddings(self) -> npt.NDArray[np.float32]: ...
    @property
    def paths(self) -> list[str]: ...
    @property
    def failed(self) -> list[tuple[str, str]]: ...
    def __len__(self) -> int: ...

class Label:
    """One labelled image (a row of ``cliplabel label``'s output)."""

    @property
    def path(self) -> str: ...
    @property
    def label(self) -> str:
        """The label, or "unknown" when abstained."""
    @property
    def score(self) -> float:
        """The top-1 probability."""
    @property
    def top_k(self) -> list[tuple[str, float]]:
        """(label, probability), best first."""
    @property
    def abstained(self) -> bool: ...
    @property
    def predicted(self) -> str:
        """The top-1 class, even when abstained."""
    @property
    def cosine(self) -> Optional[float]:
        """Zero-shot: the top-1 cosine similarity; None for a head."""

class LabelRun(Iterator[Label]):
    """The labels of a run, in input order; unreadable images collect in ``failed``."""

    def __iter__(self) -> LabelRun: ...
    def __next__(self) -> Label: ...
    @property
    def failed(self) -> list[tuple[str, str]]:
        """(path, reason) of the images that could not be labelled so far."""
    @property
    def total(self) -> int:
        """Number of input images."""
    def summary(self) -> dict[str, Any]:
        """{"total", "labelled", "abstained", "failed", "finished"}."""

class ZeroShot:
    """A zero-shot classifier from class names (or a class file) and prompt templates."""

    def __init__(
        self,
        engine: Engine,
        classes: Union[StrPath, Sequence[str]],
        templates: Union[str, StrPath, Sequence[str], None] = "photo",
        *,
        cache_dir: Optional[StrPath] = None,
    ) -> None: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """The class embeddings [classes, dim], unit rows."""
    def label(
        self,
        paths: Paths,
        top_k: int = 1,
        min_score: Optional[float] = None,
        min_margin: Optional[float] = None,
        progress: Progress = None,
    ) -> LabelRun: ...
    def scores(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Class probabilities [n, classes] for image embeddings [n, dim]."""

class Head:
    """A linear head on CLIP image embeddings (Head.fit, Head.load, or `cliplabel fit`)."""

    @staticmethod
    def load(path: StrPath) -> Head: ...
    @staticmethod
    def fit(
        engine: Engine,
        data: Union[StrPath, Iterable[tuple[StrPath, str]]],
        out: Optional[StrPath] = None,
        *,
        method: Literal["probe", "zero-shot-init", "interpolate"] = "probe",
        features: Features = "projected",
        folds: int = 5,
        c_grid: Optional[Sequence[float]] = None,
        balanced: bool = False,
        seed: int = 0,
        templates: Union[str, StrPath, Sequence[str], None] = "photo",
        cache_dir: Optional[StrPath] = None,
        force: bool = False,
    ) -> Head: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def path(self) -> Optional[str]: ...
    @property
    def failed(self) -> list[tuple[str, str]]: ...
    def predict(
        self,
        engine: Engine,
        paths: Paths,
        top_k: int = 1,
        min_score: Optional[float] = None,
        min_margin: Optional[float] = None,
        progress: Progress = None,
    ) -> LabelRun: ...
    def scores(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...

def compare(
    engine: Engine,
    train: StrPath,
    test: StrPath,
    report: Optional[StrPath] = None,
    *,
    templates: Optional[Sequence[str]] = None,
    shots: Optional[Sequence[Union[int, str]]] = None,
    seeds: int = 3,
    cv: int = 5,
    cache_dir: Optional[StrPath] = None,
    log: Optional[Callable[[str], Any]] = None,
) -> dict[str, Any]:
    """Zero-shot against heads trained on k images per class (as `cliplabel compare`)."""

def load_rgb(path: StrPath, max_pixels: Optional[int] = None) -> npt.NDArray[np.uint8]:
    """Decodes an image file to uint8 RGB [H, W, 3] with cliplabel's decoders."""

def template_sets() -> list[str]:
    """The names of the shipped template sets."""
