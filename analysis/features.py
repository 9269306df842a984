"""Feature capture for any pair: explicit feature methods first, forward hooks only as a fallback.

Every capture returns :class:`Stage` maps in NCHW with the stride inferred from the input size, so teacher and
student stages can be matched by stride whatever their architectures. Token sequences are reshaped to maps with
the grid inferred from the token count and the input's aspect ratio, never hard-coded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Stage:
    """One feature map: ``features`` is (B, C, h, w); ``stride`` is the input side divided by the map side."""

    name: str
    stride: int
    features: torch.Tensor


def stack_images(maps: list[torch.Tensor]) -> torch.Tensor:
    """(1, ...) maps of consecutive images -> (n, ...) as :func:`torch.cat` gives it, without a copy when they are
    the consecutive rows of one batched tensor (a forward's stages split per image): then a view of that tensor,
    which callers must not write into. Tensors that need gradients always get :func:`torch.cat` (a view built from
    the first row would send gradients to that row only)."""
    first = maps[0]
    if len(maps) == 1:
        return first
    base, size, strides = first._base, first.shape, first.stride()
    step, start = strides[0], first.storage_offset()
    if base is not None and size[0] == 1 and not first.requires_grad and all(
            m._base is base and m.shape == size and m.stride() == strides and m.storage_offset() == start + k * step
            and not m.is_conj() and not m.is_neg() for k, m in enumerate(maps)):
        return first.as_strided((len(maps), *size[1:]), strides, start)
    return torch.cat(maps)


def infer_grid(num_tokens: int, height: int, width: int, max_prefix: int = 8) -> tuple[int, int, int]:
    """Find ``(prefix, h, w)`` with ``prefix + h * w == num_tokens`` and ``h / w`` closest to ``height / width``.

    Args:
        num_tokens: tokens in the sequence, prefix (class, register) tokens included.
        height, width: the input image's size in pixels.
        max_prefix: most prefix tokens to consider.

    Raises:
        ValueError: when no grid fits.
    """
    best = None
    for prefix in range(0, max_prefix + 1):
        n = num_tokens - prefix
        if n <= 0:
            break
        for h in range(1, int(n**0.5) + 1):
            if n % h:
                continue
            for gh, gw in ((h, n // h), (n // h, h)):
                error = abs((gh / gw) / (height / width) - 1) + 1e-3 * prefix
                if best is None or error < best[0]:
                    best = (error, prefix, gh, gw)
        if best is not None and best[0] < 0.05:
            break
    if best is None or best[0] > 0.5:
        raise ValueError(f"no token grid of {num_tokens} tokens fits a {height}x{width} input")
    return best[1], best[2], best[3]


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N, C) tokens, prefix tokens first -> (B, C, h, w) map of the spatial tokens."""
    prefix, h, w = infer_grid(tokens.shape[1], height, width)
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def as_stage(name: str, tensor: torch.Tensor, height: int, width: int) -> Stage:
    """Wrap a (B, C, h, w) map or a (B, N, C) token sequence as a :class:`Stage`."""
    if tensor.dim() == 3:
        tensor = tokens_to_map(tensor, height, width)
    if tensor.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, h, w) or (B, N, C) features, got {tuple(tensor.shape)}")
    return Stage(name, infer_stride(height, tensor.shape[-2]), tensor)


def infer_stride(size: int, cells: int) -> int:
    """The stride of a map with ``cells`` rows over an input of ``size`` pixels: the power of two that convolution
    arithmetic maps ``size`` to ``cells`` (⌈size / s⌉ or ⌊size / s⌋, as odd sizes give: 260 px -> 9 rows is stride
    32), else the nearest whole ratio (a ViT's patch of 14)."""
    for k in range(9):
        if cells in (-(-size // 2**k), size // 2**k):
            return 2**k
    return max(1, round(size / cells))


_RECORDERS: ContextVar[frozenset] = ContextVar("distill_lens_recorders", default=frozenset())


@contextmanager
def this_call_only() -> Iterator[Callable[[], bool]]:
    """A predicate that is true only inside the call (thread or task context) that entered the block.

    Hooks and recording processors sit on shared, cached models, where other users' calls run forwards too; a
    recorder that checks this predicate keeps only the forwards of the call that asked for them.
    """
    token = object()
    reset = _RECORDERS.set(_RECORDERS.get() | {token})
    try:
        yield lambda: token in _RECORDERS.get()
    finally:
        _RECORDERS.reset(reset)


@contextmanager
def hooked(model: torch.nn.Module, select: Callable[[str, torch.nn.Module], bool], record: Callable,
           pre: bool = False, what: str = "modules") -> Iterator[dict[str, object]]:
    """Hook every submodule that ``select(name, module)`` picks; every hook is removed on exit, also after an
    exception.

    Args:
        model: the model to hook; nothing else about it changes.
        select: which submodules to hook.
        record: ``record(args, output)`` -> what to keep from a forward (``output`` is None for pre-hooks);
            returning None keeps nothing from that call (an earlier value stays). Forwards run by other calls
            (other threads or tasks using the same model meanwhile) are never recorded.
        pre: hook the module's inputs (a forward pre-hook) instead of its outputs.
        what: how to name the selected modules in the error raised when there are none.

    Yields:
        A dict, filled during forwards inside the block, from module name to what ``record`` kept.
    """
    captured: dict[str, object] = {}
    handles = []

    def keep(name: str, value: object) -> None:
        if value is not None:
            captured[name] = value

    with this_call_only() as mine:
        try:
            for name, module in model.named_modules():
                if not select(name, module):
                    continue
                if pre:
                    handles.append(module.register_forward_pre_hook(
                        lambda _m, args, name=name: keep(name, record(args, None)) if mine() else None))
                else:
                    handles.append(module.register_forward_hook(
                        lambda _m, args, output, name=name: keep(name, record(args, output)) if mine() else None))
            if not handles:
                raise ValueError(f"{type(model).__name__} has no {what} to capture")
            yield captured
        finally:
            for handle in handles:
                handle.remove()


def capture_modules(model: torch.nn.Module, pattern: str) -> AbstractContextManager[dict[str, torch.Tensor]]:
    """Record the (first) output of every submodule whose name fully matches ``pattern`` (see :func:`hooked`)."""
    return hooked(model, lambda name, _m: re.fullmatch(pattern, name) is not None,
                  lambda _args, out: out[0] if isinstance(out, (tuple, list)) else out,
                  what=f"module matching {pattern!r}")


def open_clip_stages(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[object, list]:
    """open_clip's convention: ``forward_intermediates(image=...)`` gives the image tower's blocks."""
    out = model.forward_intermediates(image=pixels)
    return out, [(f"visual.block{i}", f) for i, f in enumerate(out["image_intermediates"])]


def timm_stages(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[object, list]:
    """timm's convention: ``forward_intermediates(x, output_fmt="NCHW")`` -> (final features, maps); the outputs
    are ``forward_head`` of the final features."""
    final, maps = model.forward_intermediates(pixels, output_fmt="NCHW")
    return model.forward_head(final), [(f"block{i}", f) for i, f in enumerate(maps)]


def intermediates_stages(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[object, list]:
    """Our own convention (the builtin nets): ``forward_intermediates(x)`` -> (outputs, encoder maps)."""
    out, maps = model.forward_intermediates(pixels)
    return out, [(f"stage{i + 1}", f) for i, f in enumerate(maps)]


def transformers_stages(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[object, list]:
    """transformers' convention: ``output_hidden_states=True``; RT-DETR's encoder maps when it has no hidden
    states."""
    out = model(pixel_values=pixels, output_hidden_states=True)
    hidden = getattr(out, "hidden_states", None)
    if hidden is None and isinstance(getattr(out, "encoder_last_hidden_state", None), (list, tuple)):
        hidden = out.encoder_last_hidden_state  # RT-DETR: the encoder's multi-scale maps
    return out, [(f"hidden_states.{i}", h) for i, h in enumerate(hidden or ())]


StagesFn = Callable[[torch.nn.Module, torch.Tensor], tuple[object, list]]


def feature_method(model: torch.nn.Module) -> StagesFn | None:
    """For a plain module (no family to ask): the feature-method convention its attributes show, or None."""
    if hasattr(model, "visual") and hasattr(model, "forward_intermediates"):
        return open_clip_stages
    if hasattr(model, "forward_intermediates") and hasattr(model, "pretrained_cfg"):
        return timm_stages
    if hasattr(model, "forward_intermediates"):
        return intermediates_stages
    if hasattr(model, "config") and hasattr(model.config, "model_type"):
        return transformers_stages
    return None


DEFAULT_HOOK_PATTERN = r".*(layer|stage|block)s?\.?\d+"  # layers.0, stages.2, blocks.3, and ResNet's layer1


def forward_with_stages(model: torch.nn.Module, pixels: torch.Tensor, pattern: str | None = None,
                        explicit: StagesFn | None = None) -> tuple[object, list[Stage]]:
    """One forward pass that returns the model's usual outputs and its spatial feature maps.

    Args:
        model: any module; its mode and gradient settings are left as they are (wrap the call in
            ``torch.no_grad()`` when no gradients are wanted).
        pixels: (B, 3, H, W) model inputs on the model's device.
        pattern: regex of module names to hook instead of the model's own feature method.
        explicit: the model's feature method (its family's, e.g. :func:`timm_stages`); None: the convention its
            attributes show (:func:`feature_method`), else forward hooks.

    Returns:
        ``(outputs, stages)``: the stages as NCHW maps sorted by stride, finest first (stages of equal stride keep
        the order the model produced them); a captured tensor whose first axis is not the batch (a sequence-first
        layer's (N, B, C) tokens) is left out.
    """
    height, width = pixels.shape[-2:]
    method = None if pattern else (explicit or feature_method(model))
    named = method(model, pixels) if method is not None else None
    if named is not None and named[1]:
        outputs, named = named
    else:
        with capture_modules(model, pattern or DEFAULT_HOOK_PATTERN) as captured:
            outputs = model(pixels)
        named = list(captured.items())
    # a map whose first axis is not the batch's (a sequence-first transformer layer's (N, B, C) tokens) is no stage
    stages = [as_stage(name, t, height, width) for name, t in named
              if torch.is_tensor(t) and t.dim() in (3, 4) and t.shape[0] == pixels.shape[0]]
    return outputs, sorted(stages, key=lambda s: s.stride)


def capture_stages(model: torch.nn.Module, pixels: torch.Tensor, pattern: str | None = None) -> list[Stage]:
    """The spatial feature maps of one gradient-free forward pass (see :func:`forward_with_stages`)."""
    with torch.no_grad():
        return forward_with_stages(model, pixels, pattern)[1]


def match_stages(teacher: list[Stage], student: list[Stage], per_stride: int = 4, max_pairs: int = 4,
                 ) -> list[tuple[Stage, Stage]]:
    """Pair teacher and student stages of equal stride, finest first, at most ``max_pairs`` (the deepest).

    Hierarchical models (CNNs, SegFormer, RT-DETR): the deepest stage of each shared stride on both sides (a
    ResNet's stride-2 stem is dropped when there are five). Isotropic models (ViTs: every block at one stride, on
    both sides): up to ``per_stride`` blocks at the same relative depths, evenly spaced and ending with the last.
    """
    def by_stride(stages: list[Stage]) -> dict[int, list[Stage]]:
        grouped: dict[int, list[Stage]] = {}
        for stage in stages:
            grouped.setdefault(stage.stride, []).append(stage)
        return grouped

    t, s = by_stride(teacher), by_stride(student)
    shared = sorted(set(t) & set(s))
    isotropic = len(t) == len(s) == 1 and len(shared) == 1
    pairs = []
    for stride in shared:
        k = min(per_stride, len(t[stride]), len(s[stride])) if isotropic else 1
        for q in range(1, k + 1):
            pairs.append((t[stride][round(q / k * len(t[stride])) - 1], s[stride][round(q / k * len(s[stride])) - 1]))
    return pairs[-max_pairs:]
