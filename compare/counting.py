"""A forward counter: how many images each model ran on, whatever code path ran it.

It hooks the model's *stem* (the first module with parameters of its image path: a ResNet's first convolution,
a ViT's patch embedding, a CLIP's image-tower stem), which every forward of the model calls exactly once per
batch, explicit feature methods (``forward_intermediates``), Grad-CAM forwards and hooks alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def stem_of(model: torch.nn.Module) -> torch.nn.Module:
    """The first module, in registration order, that holds parameters of its own (of the image tower when the
    model has one, ``visual``)."""
    root = getattr(model, "visual", None) if isinstance(getattr(model, "visual", None), torch.nn.Module) else model
    for module in root.modules():
        if any(True for _ in module.parameters(recurse=False)) and not list(module.children()):
            return module
    raise ValueError(f"{type(model).__name__} has no module with parameters to count forwards on")


@contextmanager
def count_forwards(models: dict[str, torch.nn.Module]) -> Iterator[Counter]:
    """Count, per name, the images each model ran on inside the block (the batch size of every stem call).

    Args:
        models: ``{name: module}``; the same module under two names is counted under the first.

    Yields:
        A ``Counter`` of images forwarded per name, filled as forwards run; the hooks are removed on exit, also
        after an exception.
    """
    counts: Counter = Counter()
    handles = []
    seen: dict[int, str] = {}
    try:
        for name, model in models.items():
            stem = stem_of(model)
            if id(stem) in seen:
                continue
            seen[id(stem)] = name
            counts[name] = 0
            handles.append(stem.register_forward_pre_hook(
                lambda _m, args, name=name: counts.update({name: int(args[0].shape[0]) if args and
                                                           torch.is_tensor(args[0]) and args[0].dim() else 1})))
        yield counts
    finally:
        for handle in handles:
            handle.remove()
