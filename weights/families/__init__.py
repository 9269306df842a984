"""Model families: everything Distill Lens knows about one kind of model, one file each.

A family says how its models load (safetensors only, classes from an allow-list), how an RGB image becomes the
model's inputs, how the outputs become our typed results (boxes, class maps, probabilities), and where the
model's feature stages come from. Loaders and predictors ask ``family_of(source)``; nothing else dispatches on a
model's class name. Adding a family is one new file here, registered with :func:`register_family`, and the
registry entries that use it (see the README, "Adding a model family").
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from weights.predictors import Predictor
    from weights.registry import ModelSource

# Every module of this folder is a family, found by its file: adding one touches nothing here.
FAMILY_MODULES = tuple(sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])))
_FAMILIES: dict[str, Family] = {}


_SHARED_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHARED_LOCKS_GUARD = threading.Lock()


def shared_lock(shared: Any) -> threading.RLock:
    """The one re-entrant lock of an object that concurrent calls share (a cached model, a tokenizer), created on
    first use and gone with the object: a call holds it while it changes the object or relies on its state.

    A Hugging Face fast tokenizer is such an object though nothing seems to change it: it keeps its truncation and
    padding settings on the shared Rust tokenizer and sets them on each call, so two calls at once with different
    settings can each encode with the other's (a prompt unpadded, a token count cut short). Hold its lock around
    every use (:func:`compare.jobs.exclusive` takes the same locks for models).
    """
    with _SHARED_LOCKS_GUARD:
        return _SHARED_LOCKS.setdefault(shared, threading.RLock())


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here; the message says why and what to do."""


@dataclass(frozen=True)
class Geometry:
    """How an input image was resized for the network: original (h, w) and the resized (h, w) inside padding."""

    height: int
    width: int
    resized_height: int
    resized_width: int


class Family:
    """The base of every family. Task methods a family does not support raise ``NotImplementedError``.

    Methods take the :class:`weights.predictors.Predictor` they serve (its ``model``, ``processor``, ``pair``,
    ``source``, ``device``, ``dtype``, ``labels``), so a family holds no per-model state.
    """

    name: str = ""
    classes: tuple[str, ...] = ()  # the model classes this family loads; anything else is refused

    # Loading --------------------------------------------------------------------------------------------------
    def check(self, source: ModelSource) -> None:
        """Refuse a source whose class is outside the allow-list, naming the allowed ones."""
        if self.classes and source.model_class not in self.classes:
            raise ModelUnavailableError(f"{source.model_class!r} is not an allowed {self.name} class; allowed: "
                                        f"{', '.join(self.classes)}.")

    def load(self, source: ModelSource, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
        """``(model, processor)`` on ``device`` in eval mode; ``processor`` is whatever :meth:`prepare` needs."""
        raise NotImplementedError

    def default_dtype(self, device: torch.device, source: ModelSource) -> torch.dtype:
        """fp16 for Hub weights on CUDA (they ship for it), fp32 otherwise."""
        return torch.float16 if device.type == "cuda" and source.kind == "hub" else torch.float32

    def weights_file(self, source: ModelSource) -> Path | None:
        """The local safetensors file of a model when it is on this machine (no download), else None."""
        return None

    def parameters(self, source: ModelSource) -> int | None:
        """The model's parameter count without loading its weights, where the family can tell; else None."""
        return None

    def labels(self, predictor: Predictor) -> list[str]:
        """Class names in output order: the pair's own, else the model config's ``id2label``."""
        if predictor.pair is not None and predictor.pair.labels:
            return list(predictor.pair.labels)
        id2label = getattr(getattr(predictor.model, "config", None), "id2label", None) or {}
        return [id2label[i] for i in range(len(id2label))]

    # Running --------------------------------------------------------------------------------------------------
    def prepare(self, predictor: Predictor, image) -> tuple[dict[str, torch.Tensor], Geometry]:
        """An RGB uint8 (H, W, 3) numpy image -> ``({"pixel_values": (1, 3, h, w)}, geometry)`` on the model's
        device and dtype."""
        raise NotImplementedError

    def prepare_many(self, predictor: Predictor, images: list) -> list[tuple[dict[str, torch.Tensor], Geometry]]:
        """:meth:`prepare` of each image, in order; a family whose preparation batches without changing any image's
        result (no padding to the batch's largest image) prepares images of one size at once."""
        return [self.prepare(predictor, image) for image in images]

    def prepare_key(self, predictor: Predictor) -> Hashable | None:
        """What determines :meth:`prepare`'s output besides the image: models of a request with equal keys share
        one preparation of each image (a pair's teacher and students often use the same processor); None: never
        shared."""
        return None

    def forward(self, predictor: Predictor, inputs: dict[str, torch.Tensor]) -> Any:
        """The model's outputs for a batch of prepared inputs."""
        return predictor.model(inputs["pixel_values"])

    def stages(self, model: torch.nn.Module, pixels: torch.Tensor) -> tuple[Any, list[tuple[str, torch.Tensor]]]:
        """``(outputs, [(name, (B, C, h, w) or (B, N, C) features), ...])`` from one forward through the model's own
        feature method; the default hooks nothing and returns no stages, so the analysis falls back to hooks."""
        return None, []

    explicit_stages: bool = False  # whether :meth:`stages` is implemented
    zero_shot: bool = False  # classification against the user's class names through a text tower (CLIP)

    # Task outputs ---------------------------------------------------------------------------------------------
    def detections(self, predictor: Predictor, outputs: Any, geometries: list[Geometry], threshold: float,
                   ) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        """Per image: ``{"boxes": (N, 4) xyxy in input-image pixels, "scores": (N,), "labels": (N,) int64}``
        above ``threshold`` (or more: the predictor keeps those above it on the host), on the model's device, not
        yet read back, in any order. A family with as many candidates for every image may return the batch as one
        dict instead, (B, K, 4), (B, K) and (B, K): fewer ops than a dict per image."""
        raise NotImplementedError(f"{self.name} models do not detect")

    def detection_candidates(self, predictor: Predictor, outputs: Any, geometry: Geometry, height: int, width: int,
                             index: int | list[int] = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``index``'s candidate boxes (Q, 4) xyxy scaled to ``height`` x ``width`` and their scores (Q,),
        with no threshold and no host sync (for the analysis' foreground); for a list of B images of one size,
        (B, Q, 4) and (B, Q)."""
        raise NotImplementedError(f"{self.name} models do not detect")

    def logits(self, predictor: Predictor, outputs: Any) -> torch.Tensor:
        """Segmentation: (B, K, h, w) class logits; classification: (B, K)."""
        return outputs["logits"] if isinstance(outputs, dict) else outputs.logits

    def class_maps(self, predictor: Predictor, outputs: Any, geometries: list[Geometry]) -> list[torch.Tensor]:
        """Per image: (H, W) int64 class indices at the input image's size, on the model's device."""
        raise NotImplementedError(f"{self.name} models do not segment")

    def segmentation_logits(self, predictor: Predictor, outputs: Any, geometry: Geometry, index: int = 0,
                            ) -> torch.Tensor:
        """Image ``index``'s (1, K, h, w) logits over the image part of the input (padding dropped)."""
        return self.logits(predictor, outputs)[index:index + 1]

    def token_blocks(self, predictor: Predictor) -> str | None:
        """For a token model (a ViT), the module-name regex of its blocks, on whose outputs Grad-CAM takes its
        gradient; None for models whose stages are feature maps."""
        return None

    def attention_kind(self, predictor: Predictor) -> str:
        """How the Analysis tab explains one target on this model: ``"grad-cam"`` or ``"deformable"``."""
        return "grad-cam"

    def detection_score(self, predictor: Predictor, outputs: Any, box: list[float], label: int, geometry: Geometry,
                        padded: tuple[int, int]) -> torch.Tensor:
        """The (B,) score Grad-CAM explains for a detected box of class index ``label``."""
        raise NotImplementedError(f"Grad-CAM of {self.name} detections is not supported")


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family known by its ``name`` (one instance is kept)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _FAMILIES[cls.name] = cls()
    return cls


def family_of(source: ModelSource | str) -> Family:
    """The family that loads ``source`` (or the family of that name); its module is imported on first use.

    Raises:
        ModelUnavailableError: a family no file of ``weights/families`` defines.
    """
    name = source if isinstance(source, str) else source.family
    if name not in _FAMILIES and name in FAMILY_MODULES:
        importlib.import_module(f"weights.families.{name}")
    if name not in _FAMILIES:
        raise ModelUnavailableError(f"Unknown model family {name!r}; known: {', '.join(FAMILY_MODULES)}.")
    return _FAMILIES[name]


def families() -> dict[str, Family]:
    """Every family, all modules imported."""
    for name in FAMILY_MODULES:
        family_of(name)
    return dict(_FAMILIES)


def no_inference_tensors(load: Callable[[], Any]) -> Callable[[], Any]:
    """Run a load outside any ambient ``torch.inference_mode``: a model loaded inside one would hold inference
    tensors, and every later prompt tuning on the cached model would fail."""
    def wrapped():
        with torch.inference_mode(False):
            return load()
    return wrapped
