"""Attention maps for the same target in teacher and student: Grad-CAM on CNN feature maps, attention rollout
for ViTs, and the deformable-attention sampling points of a DETR query.

Nothing here changes a model's mode or parameters: gradients are taken with ``torch.autograd.grad`` (no ``.grad``
is written), and hooks or attention switches live only inside context managers that restore in ``finally``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
import torch.nn.functional as F

from analysis.features import StagesFn, as_stage, capture_modules, forward_with_stages, hooked, this_call_only


def normalise_map(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each (h, w) map of a (B, h, w) batch to [0, 1]."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(eps)).reshape(maps.shape)


def grad_cam(model: torch.nn.Module, pixels: torch.Tensor, target: Callable[[object], torch.Tensor],
             stage: int = -1, pattern: str | None = None, explicit: StagesFn | None = None,
             tokens: str | None = None) -> tuple[torch.Tensor, object]:
    r"""Grad-CAM (Selvaraju et al., 2017): a stage's channels weighted by the spatial mean of the target's gradient,
    rectified.

    Args:
        model: a CNN-like model whose stages are NCHW maps (see :func:`analysis.features.forward_with_stages`), or a
            token model with ``tokens`` given.
        pixels: (B, 3, H, W) inputs; not modified.
        target: maps the model's outputs to a (B,) score, e.g. a class logit at a box centre.
        stage: index into the stages sorted by stride (-1: the coarsest); with ``tokens``, into the hooked modules
            in forward order (-1: the deepest).
        pattern: module-name regex for the hook fallback.
        explicit: the model's feature method (see :func:`analysis.features.forward_with_stages`).
        tokens: a module-name regex of a token model's blocks (e.g. ``blocks\.\d+`` for a ViT): the gradient is
            taken on that block's own (B, N, C) output, the tensor the rest of the model reads, and both are then
            laid out on the patch grid (prefix tokens dropped), as pytorch-grad-cam's reshape transform does.

    Returns:
        ``(cam, outputs)``: (B, h, w) maps in [0, 1] on the stage's grid, and the model's outputs.

    Raises:
        ValueError: no feature map inside the graph (e.g. a ViT without ``tokens``).
    """
    inputs = pixels.detach().clone().requires_grad_(True)  # keeps a graph even when no parameter needs grad
    height, width = pixels.shape[-2:]
    with torch.enable_grad():
        if tokens is not None:
            with capture_modules(model, tokens) as captured:
                outputs = model(inputs)
            name, raw = list(captured.items())[stage]
            (raw_gradient,) = torch.autograd.grad(target(outputs).sum(), raw)
            features = as_stage(name, raw.detach(), height, width).features
            gradient = as_stage(name, raw_gradient, height, width).features
        else:
            outputs, stages = forward_with_stages(model, inputs, pattern, explicit)
            features = stages[stage].features
            if features.dim() != 4 or features.grad_fn is None and not features.requires_grad:
                raise ValueError("Grad-CAM needs NCHW feature maps inside the graph; give a token model's blocks "
                                 "as `tokens`")
            score = target(outputs)
            (gradient,) = torch.autograd.grad(score.sum(), features)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features.detach()).sum(1))
    return normalise_map(cam), outputs


_UNFUSED_GUARD = threading.Lock()
_UNFUSED: dict[torch.nn.Module, list] = {}  # module -> [calls inside unfused_attention, its own fused_attn flag]


@contextmanager
def unfused_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Switch timm attention modules to their explicit (unfused) path and record their attention probabilities.

    Yields:
        A list filled during forwards inside the block with one (B, heads, N, N) tensor per attention module,
        in call order. Every hook is removed on exit, also after an error, and every module's ``fused_attn`` flag
        is back as it was once the last call inside this block on that model has left it: concurrent calls on a
        shared model (a server's cached one) neither restore each other's switch nor leave it switched. Meanwhile
        other forwards of the model take the explicit path too (the same values, slower); each call's hooks record
        its own forwards only.
    """
    probs: list[torch.Tensor] = []
    switched: list[torch.nn.Module] = []
    handles = []
    with this_call_only() as mine:
        try:
            with _UNFUSED_GUARD:
                for module in model.modules():
                    if hasattr(module, "fused_attn") and hasattr(module, "attn_drop"):
                        entry = _UNFUSED.setdefault(module, [0, module.fused_attn])
                        entry[0] += 1
                        switched.append(module)
                        module.fused_attn = False
            for module in switched:
                handles.append(module.attn_drop.register_forward_hook(
                    lambda _m, _i, output: probs.append(output.detach()) if mine() else None))
            if not switched:
                raise ValueError(f"{type(model).__name__} has no timm attention modules to capture")
            yield probs
        finally:
            for handle in handles:
                handle.remove()
            with _UNFUSED_GUARD:
                for module in switched:
                    entry = _UNFUSED[module]
                    entry[0] -= 1
                    if entry[0] == 0:
                        module.fused_attn = entry[1]
                        del _UNFUSED[module]


def attention_rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): heads averaged, the residual path added, layers multiplied.

    Args:
        attentions: per layer (B, heads, N, N) row-stochastic attention.
        residual: weight of the identity (skip connection) mixed into each layer.

    Returns:
        (B, N, N) rollout; row ``i`` says how much each input token flows into output token ``i``.
    """
    rollout = None
    for attention in attentions:
        a = attention.float().mean(1)
        eye = torch.eye(a.shape[-1], device=a.device).expand_as(a)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def vit_rollout_map(model: torch.nn.Module, pixels: torch.Tensor, prefix_tokens: int = 1,
                    forward: Callable[[torch.nn.Module, torch.Tensor], object] | None = None) -> torch.Tensor:
    """The class token's rollout over the patch grid of a timm ViT: (B, 3, H, W) -> (B, h, w) in [0, 1]."""
    from analysis.features import infer_grid

    with unfused_attention(model) as probs, torch.no_grad():
        (forward or (lambda m, x: m(x)))(model, pixels)
    rollout = attention_rollout(probs)
    _, h, w = infer_grid(rollout.shape[-1] - prefix_tokens, pixels.shape[-2], pixels.shape[-1], max_prefix=0)
    return normalise_map(rollout[:, 0, prefix_tokens:].reshape(-1, h, w))


def capture_deformable_sampling(model: torch.nn.Module, name_contains: str = "decoder",
                                ) -> AbstractContextManager[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Record the sampling locations and attention weights of every multi-scale deformable attention kernel
    whose module name contains ``name_contains`` (hooks removed on exit, see :func:`analysis.features.hooked`).

    Yields:
        ``{module name: (sampling_locations (B, Q, heads, levels, points, 2) in [0, 1] xy,
        attention_weights (B, Q, heads, levels, points))}``, filled during forwards inside the block.
    """
    return hooked(model, lambda name, m: type(m).__name__ == "MultiScaleDeformableAttention" and name_contains in name,
                  lambda args, _out: (args[4].detach(), args[5].detach()), pre=True,
                  what="multi-scale deformable attention")


def sampling_point_map(locations: torch.Tensor, weights: torch.Tensor, size: tuple[int, int],
                       blur: float = 2.0) -> torch.Tensor:
    """Splat one query's sampling points, weighted by their attention weights, onto an (H, W) map.

    Args:
        locations: (heads, levels, points, 2) xy in [0, 1].
        weights: (heads, levels, points).
        size: (H, W) of the output map.
        blur: Gaussian sigma in pixels, so single points stay visible.

    Returns:
        (H, W) map in [0, 1].
    """
    height, width = size
    xy = locations.reshape(-1, 2).float()
    x = (xy[:, 0] * width).long().clamp(0, width - 1)
    y = (xy[:, 1] * height).long().clamp(0, height - 1)
    canvas = torch.zeros(height * width, device=locations.device)
    canvas.index_add_(0, y * width + x, weights.reshape(-1).float())
    canvas = canvas.reshape(1, 1, height, width)
    radius = max(1, int(3 * blur))
    grid = torch.arange(-radius, radius + 1, device=canvas.device, dtype=torch.float32)
    kernel = torch.exp(-grid.square() / (2 * blur**2))
    kernel = kernel / kernel.sum()
    canvas = F.conv2d(canvas, kernel.view(1, 1, 1, -1), padding=(0, radius))
    canvas = F.conv2d(canvas, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return normalise_map(canvas[:, 0])[0]


class CrossAttentionRecorder:
    """An attention processor that records cross-attention probabilities, averaged over heads, and leaves the
    output to the wrapped processor (so recording never changes what the model computes)."""

    def __init__(self, inner, store: list[torch.Tensor], active: Callable[[], bool]):
        self.inner, self.store, self.active = inner, store, active

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None and hidden_states.dim() == 3 and self.active():
            with torch.no_grad():
                query = attn.head_to_batch_dim(attn.to_q(hidden_states))
                key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
                probs = attn.get_attention_scores(query, key, None)  # (B * heads, Nq, tokens)
                self.store.append(probs.reshape(hidden_states.shape[0], attn.heads, *probs.shape[1:]).mean(1).float())
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


@contextmanager
def capture_cross_attention(unet, active: Callable[[], bool] = lambda: True) -> Iterator[list[torch.Tensor]]:
    """Record every cross-attention layer's (B, Nq, tokens) probabilities while ``active()`` holds; the UNet's
    processors are restored on exit, also after an error."""
    store: list[torch.Tensor] = []
    processors = dict(unet.attn_processors)
    with this_call_only() as mine:
        try:
            unet.set_attn_processor({name: CrossAttentionRecorder(p, store, lambda: mine() and active())
                                     if name.endswith("attn2.processor") else p for name, p in processors.items()})
            yield store
        finally:
            unet.set_attn_processor(processors)


def token_maps(store: list[torch.Tensor], height: int, width: int, batch_index: int = -1) -> torch.Tensor:
    """Average recorded cross-attention into one (tokens, h, w) map per token on the finest grid recorded.

    Args:
        store: (B, Nq, tokens) probabilities from :func:`capture_cross_attention` (any mix of resolutions).
        height, width: the latent's size, to infer each layer's grid.
        batch_index: which batch element (-1: the last, the conditional half under classifier-free guidance).
    """
    from analysis.features import infer_grid

    maps, finest = [], None
    for probs in store:
        _, h, w = infer_grid(probs.shape[1], height, width, max_prefix=0)
        grid = probs[batch_index].t().reshape(-1, 1, h, w)
        finest = (h, w) if finest is None or h * w > finest[0] * finest[1] else finest
        maps.append(grid)
    resized = [F.interpolate(m, size=finest, mode="bilinear", align_corners=False) for m in maps]
    return torch.stack(resized).mean(0)[:, 0]
