"""Where teacher and student features agree (consensus) and disagree (divergence), after the ADM paper.

All functions take NCHW feature maps on any device, work in batch, return tensors on the same device and never
modify their inputs. Teacher and student may have different channel widths; a student map of another size is
resized to the teacher's grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from analysis.cka import hsic_pairs, hsic_parts, hsic_self

MAX_LOCATIONS = 4096  # larger maps are average-pooled to at most this many locations (64 x 64)


def _pool(features: torch.Tensor, max_locations: int = MAX_LOCATIONS) -> torch.Tensor:
    """Average-pool a (B, C, h, w) map to at most ``max_locations`` cells, keeping its aspect ratio; float32.
    Half-precision maps are pooled first (the kernel accumulates in float32) and cast after, on fewer cells."""
    h, w = features.shape[-2:]
    if h * w <= max_locations:
        return features.float()
    factor = math.ceil((h * w / max_locations) ** 0.5)  # a whole factor: plain average pooling, the fast kernel
    return F.avg_pool2d(features, factor, ceil_mode=True).float()


def pool_to(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool (B, C, h, w) to ``grid``: plain pooling when the grid divides the map, adaptive otherwise."""
    h, w = features.shape[-2:]
    if (h, w) == tuple(grid):
        return features
    if h % grid[0] == 0 and w % grid[1] == 0:
        return F.avg_pool2d(features, (h // grid[0], w // grid[1]))
    return F.adaptive_avg_pool2d(features, grid)


def _fit_grid(teacher: torch.Tensor, student: torch.Tensor,
              pooled: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring both maps to the teacher's (pooled) grid, in float32; ``pooled``: the teacher already pooled."""
    pooled = _pool(teacher) if pooled is None else pooled
    if student.shape[-2:] == teacher.shape[-2:]:  # the usual case: the same grid, pooled alike
        return pooled, _pool(student)
    teacher, student = pooled, student.float()
    h, w = teacher.shape[-2:]
    if student.shape[-2:] != (h, w):
        student = F.interpolate(student, size=(h, w), mode="bilinear", align_corners=False) \
            if student.shape[-2] < h else F.adaptive_avg_pool2d(student, (h, w))
    return teacher, student


def _locations(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return features.flatten(2).transpose(1, 2)


def channel_norms(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): each location's feature vector's L2 norm, reduced as the map lies in memory: a fused
    norm over channels stored innermost (channels-last), a sum of squares over channels stored outermost, where a
    norm would cost ~30x more on the CPU (and the sum of squares ~1.5x more the other way round)."""
    if features.stride(1) == 1:
        return torch.linalg.vector_norm(features, dim=1)
    return features.square().sum(1).sqrt()


def _unit_channels(features: torch.Tensor, eps: float, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h*w) with every location's feature vector scaled to unit length; ``norms``, the
    (B, h, w) :func:`channel_norms`, when the caller has them. The (B, C, N) result is a view of the maps' layout, so
    the sums and products below read memory in order."""
    x = features.flatten(2)
    norms = channel_norms(features) if norms is None else norms
    return x / norms.flatten(1)[:, None].clamp_min(eps)


def affinity_consensus(teacher: torch.Tensor, student: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Dimension-free similarity: per location, the Pearson correlation between its affinity row (cosine
    similarity to every other location) in the teacher and in the student.

    Invariant to any orthogonal transform and any global scaling of either side's channels. Computed exactly
    without forming the (h*w)^2 affinity matrices: with unit features ``u_i`` (teacher) and ``v_i`` (student),
    ``sum_j a_ij b_ij = u_i^T (U^T V) v_i`` and ``sum_j a_ij^2 = u_i^T (U^T U) u_i``, so the cost is
    O(h*w * C^2) rather than O((h*w)^2 * C), in a few batched matrix products; where the locations are fewer than
    the channels (deep stages of wide CNNs) the (h*w)^2 affinities are formed instead, whichever costs less.

    Args:
        teacher: (B, Ct, h, w) features.
        student: (B, Cs, h', w') features.

    Returns:
        (B, h, w) similarity in [-1, 1] on the teacher's (possibly pooled) grid; NaN where it is undefined (a
        location whose affinity row is constant on either side: features constant over the map, or one location).
    """
    t, s = _fit_grid(teacher, student)
    b, _, h, w = t.shape
    return _affinity_from_terms(_affinity_terms(t, s, eps), h * w, eps).reshape(b, h, w)


def _affinities_cheaper(n: int, ct: int, cs: int) -> bool:
    """Whether forming the (N, N) affinities costs less than the per-location path through C x C Grams (few
    locations, wide channels: a ResNet's last stages)."""
    return n * n * (ct + cs) < 2 * n * (ct * cs + ct * ct + cs * cs) and n <= 2048


def _affinity_terms(t: torch.Tensor, s: torch.Tensor, eps: float = 1e-8,
                    norms: tuple[torch.Tensor, torch.Tensor] | None = None,
                    teacher_of: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """Five (B, N) tensors: per location, the sums behind the affinity correlation (teacher and student row means,
    the cross sum and the two sums of squares) of maps already on one grid. They sum over the N locations whatever
    the channels, so pairs of different widths on one grid stack along B. ``norms``: both maps' (B, h, w)
    :func:`channel_norms`, when the caller has them.

    ``teacher_of``: when several students face the same teacher map (every student of a pair against the teacher's
    stage), ``s`` stacks M student maps of B images each, ``t`` only the D distinct teacher maps they face, and
    ``teacher_of[m]`` names student m's; the teacher's own sums are then computed once per distinct map and the
    five results are (M·B, N). None: ``t`` and ``s`` pair up row by row."""
    n = t.shape[-2] * t.shape[-1]
    norm_t, norm_s = norms or (None, None)
    u, v = _unit_channels(t, eps, norm_t), _unit_channels(s, eps, norm_s)  # (D·B, Ct, N), (M·B, Cs, N)
    ut, vt = u.transpose(1, 2), v.transpose(1, 2)  # (B, N, C) views
    if _affinities_cheaper(n, u.shape[1], v.shape[1]):
        # few locations, wide channels (a ResNet's last stages): the (N, N) affinities themselves are cheaper
        a, b_ = torch.bmm(ut, u), torch.bmm(vt, v)
        mean_t, square_t = a.mean(-1), a.square().sum(-1)
        cross = _per_pair(lambda x, y: (x * y).sum(-1), a, b_, teacher_of)
        return _for_pairs(mean_t, teacher_of), b_.mean(-1), cross, _for_pairs(square_t, teacher_of), \
            b_.square().sum(-1)
    # per location i: the row mean u_i . mean_j u_j, the cross sum, and u_i^T (U^T U) u_i, v_i^T (V^T V) v_i, each
    # through its C x C Gram
    mean_t, square_t = torch.bmm(u.mean(2)[:, None], u)[:, 0], _quadratic(u, torch.bmm(u, ut), u)
    return (_for_pairs(mean_t, teacher_of), torch.bmm(v.mean(2)[:, None], v)[:, 0],
            _per_pair(_cross_sums, u, v, teacher_of), _for_pairs(square_t, teacher_of),
            _quadratic(v, torch.bmm(v, vt), v))


def _images(x: torch.Tensor, k: int, b: int) -> torch.Tensor:
    """Map k's rows (its b images) of a stack of maps along the batch axis: a view."""
    return x[k * b:(k + 1) * b]


def _row_by_row(teacher_of: list[int] | None) -> bool:
    """Whether each student map faces the teacher map in its own position (no teacher map shared)."""
    return teacher_of is None or teacher_of == list(range(len(teacher_of)))


def _for_pairs(teacher: torch.Tensor, teacher_of: list[int] | None) -> torch.Tensor:
    """The distinct teacher maps' (D·B, ...) rows laid out per pair, (M·B, ...), by ``teacher_of``."""
    if _row_by_row(teacher_of):
        return teacher
    b = teacher.shape[0] // (max(teacher_of) + 1)
    return torch.cat([_images(teacher, j, b) for j in teacher_of])


def _per_pair(cross: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t: torch.Tensor, s: torch.Tensor,
              teacher_of: list[int] | None) -> torch.Tensor:
    """``cross(t, s)`` of row-paired stacks; with ``teacher_of``, one call per student map against its teacher's rows
    (views: the teacher is not copied once per student)."""
    if _row_by_row(teacher_of):
        return cross(t, s)
    b = s.shape[0] // len(teacher_of)
    return torch.cat([cross(_images(t, j, b), _images(s, m, b)) for m, j in enumerate(teacher_of)])


def _quadratic(u: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, N): per location i, ``u_i^T m v_i`` for maps u (B, Cu, N), v (B, Cv, N) and m (B, Cu, Cv), with the
    product laid out as the maps lie in memory: locations by channels for channels-last maps (a CNN's features on
    the CPU usually are), channels by locations otherwise. Against the layout, the product and its reduction read
    memory across the grain (measured: ~1.5x slower)."""
    if u.stride(1) == 1 and v.stride(1) == 1:  # channels innermost: (B, N, Cu) @ (B, Cu, Cv), reduced over Cv
        return torch.bmm(u.transpose(1, 2), m).mul_(v.transpose(1, 2)).sum(2)
    return torch.bmm(m.transpose(1, 2), u).mul_(v).sum(1)  # in place: one temporary less


def _cross_sums(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, N): per location i, sum_j a_ij b_ij = u_i^T (U V^T) v_i of unit maps (B, Ct, N) and (B, Cs, N), through
    the Ct x Cs Gram; the product is as wide as the student (the narrower side, usually)."""
    return _quadratic(u, torch.bmm(u, v.transpose(1, 2)), v)


def _shuffled_affinity_terms(t: torch.Tensor, s: torch.Tensor, terms: tuple[torch.Tensor, ...], order: torch.Tensor,
                             eps: float = 1e-8, norms: tuple[torch.Tensor, torch.Tensor] | None = None,
                             teacher_of: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """:func:`_affinity_terms` of ``t`` against ``s`` with its locations in ``order``, reusing the unshuffled
    ``terms``: a student's affinities among its own locations do not change when they are reordered, so its row means
    and sums of squares are the unshuffled ones reordered, and only the cross sums are new (one product)."""
    row_mean_t, row_mean_s, _, square_t, square_s = terms
    n = t.shape[-2] * t.shape[-1]
    norm_t, norm_s = norms or (None, None)
    u = _unit_channels(t, eps, norm_t)  # (D·B, Ct, N)
    v = _unit_channels(s, eps, norm_s)[:, :, order]  # (M·B, Cs, N), reordered
    if _affinities_cheaper(n, u.shape[1], v.shape[1]):
        cross = _per_pair(lambda x, y: (x * y).sum(-1), torch.bmm(u.transpose(1, 2), u),
                          torch.bmm(v.transpose(1, 2), v), teacher_of)
    else:
        cross = _per_pair(_cross_sums, u, v, teacher_of)
    return row_mean_t, row_mean_s[:, order], cross, square_t, square_s[:, order]


CONSTANT_ROW = 1e-6  # an affinity row whose variance (per location) is below this is constant: no correlation


def _affinity_from_terms(terms: tuple[torch.Tensor, ...], n: int, eps: float = 1e-8) -> torch.Tensor:
    """(B, N) Pearson correlation of affinity rows from :func:`_affinity_terms`' five sums; NaN (undefined) where
    either row is constant (features constant over the locations, or a single location)."""
    row_mean_t, row_mean_s, cross, square_t, square_s = terms
    covariance = cross - n * row_mean_t * row_mean_s
    var_t, var_s = (square_t - n * row_mean_t.square()).clamp_min(0), (square_s - n * row_mean_s.square()).clamp_min(0)
    correlation = (covariance * (var_t * var_s).clamp_min(eps * eps).rsqrt()).clamp(-1, 1)
    constant = (var_t <= CONSTANT_ROW * n) | (var_s <= CONSTANT_ROW * n)
    return correlation.masked_fill(constant, float("nan"))


def projected_consensus(teacher: torch.Tensor, student: torch.Tensor, ridge: float = 1e-4,
                        eps: float = 1e-8) -> torch.Tensor:
    """Similarity after projection: the student's channels are mapped onto the teacher's by (ridge) least squares
    over the image's locations, then each location's cosine similarity to the teacher is taken (both centred).

    Invariant to any invertible linear transform of the student's channels, up to the small ridge. The projection
    is fitted on the locations it is judged on: with about as many student channels as locations it can fit
    anything, so prefer :func:`affinity_consensus` for coarse maps.

    Args:
        teacher: (B, Ct, h, w) features.
        student: (B, Cs, h', w') features.
        ridge: regulariser, relative to the mean eigenvalue of the student's Gram matrix.

    Returns:
        (B, h, w) similarity in [-1, 1].
    """
    t, s = _fit_grid(teacher, student)
    b, _, h, w = t.shape
    y = _locations(t)
    x = _locations(s)
    y = y - y.mean(dim=1, keepdim=True)
    x = x - x.mean(dim=1, keepdim=True)
    gram = x.transpose(1, 2) @ x  # (B, Cs, Cs)
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(eps)[:, None, None]
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    # solve_ex: no error check, so no device-to-host sync on CUDA (the ridge keeps the system well posed)
    projection = torch.linalg.solve_ex(gram + ridge * scale * eye, x.transpose(1, 2) @ y)[0]  # (B, Cs, Ct)
    return F.cosine_similarity(x @ projection, y, dim=-1, eps=eps).reshape(b, h, w)


def projection_is_determined(teacher: torch.Tensor, student: torch.Tensor) -> bool:
    """Whether a stage has enough locations (at least twice the student's channels, after pooling) for the
    least-squares map of :func:`projected_consensus` to mean something rather than fit anything."""
    h, w = teacher.shape[-2:]
    return min(h * w, MAX_LOCATIONS) >= 2 * student.shape[1]


def consensus_weights(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """Spatial softmax of ``similarity / tau``: (B, h, w) -> (B, h, w), each map summing to 1."""
    return _spatial_softmax(similarity, tau)


def divergence_weights(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """Spatial softmax of ``(1 - similarity) / tau``: where the teacher is ahead."""
    return _spatial_softmax(1.0 - similarity, tau)


def _spatial_softmax(scores: torch.Tensor, tau: float) -> torch.Tensor:
    if not float(tau) > 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    return (scores / float(tau)).flatten(1).softmax(-1).reshape(scores.shape)


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Linear CKA of two representations of the same N samples with the unbiased HSIC estimator (Song et al. 2012;
    Nguyen et al. 2021): (N, C1), (N, C2) -> scalar, 1 for the same representation up to rotation and scale, ~0 for
    unrelated ones (it can come out slightly negative); NaN when a side is constant over the samples or
    N < :data:`MIN_CKA_LOCATIONS`."""
    return cka_matrix([x.T[None, :, :, None]], [y.T[None, :, :, None]], max_locations=x.shape[0], eps=eps)[0, 0]


MAX_CKA_LOCATIONS = 1024  # the shared grid of the CKA matrix holds at most this many cells per image


def shared_grid(maps: list[torch.Tensor], max_locations: int = MAX_CKA_LOCATIONS) -> tuple[int, int]:
    """The coarsest grid among ``maps`` (per side), shrunk further to at most ``max_locations`` cells."""
    h, w = min(m.shape[-2] for m in maps), min(m.shape[-1] for m in maps)
    if h * w > max_locations:
        factor = (h * w / max_locations) ** 0.5
        h, w = max(1, int(h / factor)), max(1, int(w / factor))
    return h, w


def centred_grams(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """(K, N, N) Gram matrices over the N = B·h·w locations of ``grid``, of each map's centred features.

    Each map is pooled once to the grid; maps of one shape (a ViT's blocks) are pooled and multiplied as one batch.
    The features are centred over the locations *before* the product (a large mean on every channel would otherwise
    cancel in float32 and leave rounding error) and scaled by their largest magnitude (CKA does not depend on the
    scale; features around 1e20 would overflow a float32 product). A Gram matrix is N x N whatever the map's width,
    so maps of any width stack without padding.
    """
    groups: dict[tuple, list[int]] = {}
    for k, m in enumerate(maps):
        groups.setdefault((tuple(m.shape), m.dtype), []).append(k)
    blocks = []
    for (shape, _), members in groups.items():
        stacked = torch.cat([maps[k] for k in members]) if len(members) > 1 else maps[members[0]]
        pooled = pool_to(stacked, grid).float()  # (G*B, C, h, w); pooled in its own precision, cast after
        x = pooled.reshape(len(members), -1, shape[1], grid[0] * grid[1]).transpose(2, 3).flatten(1, 2)  # (G, N, C)
        x = x - x.mean(1, keepdim=True)
        x = x / x.abs().amax((1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        blocks.append(torch.bmm(x, x.transpose(1, 2)))
    order = [k for members in groups.values() for k in members]
    grams = torch.cat(blocks) if len(blocks) > 1 else blocks[0]  # (K, N, N) in group order
    if order != sorted(order):  # groups interleave: back to the maps' order
        grams = torch.stack([grams[order.index(k)] for k in range(len(maps))])
    return grams


MIN_CKA_LOCATIONS = 4  # unbiased HSIC divides by N (N - 3)
READABLE_LOCATIONS = 256  # under this many locations (16 x 16), one image's CKA and consensus read high by chance


def cka_matrices(teacher: list[torch.Tensor], student: list[torch.Tensor], max_locations: int = MAX_CKA_LOCATIONS,
                 eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear CKA (Kornblith et al. 2019) with the unbiased HSIC estimator between every teacher stage and every
    student stage, over the batch's locations, and its chance level: the same with the student's locations in a
    fixed random order (unrelated representations of these widths on this grid).

    All maps are pooled once to one shared grid (the coarsest of them); the whole matrix comes from stacked Gram
    matrices in three products: ``CKA(i, j) = HSIC₁(K_i, L_j) / sqrt(HSIC₁(K_i, K_i) HSIC₁(L_j, L_j))``.

    Args:
        teacher: T maps (B, C_i, h_i, w_i).
        student: S maps (B, C_j, h_j, w_j), same batch.
        max_locations: most cells per image of the shared grid.

    Returns:
        ``(matrix, chance)``, (T, S) each on the teacher maps' device: 1 for the same representation up to rotation
        and scale, ~0 unrelated (slightly negative can happen); NaN where a side's features are constant over the
        locations, and everywhere when the grid has fewer than :data:`MIN_CKA_LOCATIONS` locations.
    """
    grid = shared_grid(teacher + student, max_locations)
    grams = centred_grams(teacher + [s.to(teacher[0].device) for s in student], grid)  # (T+S, N, N)
    n, t = grams.shape[-1], len(teacher)
    if n < MIN_CKA_LOCATIONS:
        nan = torch.full((t, len(student)), float("nan"), device=grams.device)
        return nan, nan.clone()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(grams.device)
    parts_t, parts_s = hsic_parts(grams[:t]), hsic_parts(grams[t:])
    shuffled = hsic_parts(grams[t:][:, order][:, :, order])
    self_t, self_s = hsic_self(parts_t, n), hsic_self(parts_s, n)
    norms = (self_t[:, None] * self_s[None]).clamp_min(0).sqrt()
    undefined = norms <= eps

    def ratio(cross: torch.Tensor) -> torch.Tensor:
        return (cross / norms.clamp_min(eps)).masked_fill(undefined, float("nan"))

    return ratio(hsic_pairs(parts_t, parts_s, n)), ratio(hsic_pairs(parts_t, shuffled, n))


def cka_matrix(teacher: list[torch.Tensor], student: list[torch.Tensor],
               max_locations: int = MAX_CKA_LOCATIONS, eps: float = 1e-12) -> torch.Tensor:
    """The (T, S) matrix of :func:`cka_matrices` (unbiased linear CKA over the batch's locations)."""
    return cka_matrices(teacher, student, max_locations, eps)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool foreground -> (B, h, w) bool: a cell is foreground when over half of it is."""
    return pool_to(mask[:, None].float(), size)[:, 0] > 0.5  # area resizing (plain pooling when it divides)


def foreground_cells(mask: torch.Tensor, grids: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """:func:`resize_mask` to several grids at once, as float 0/1 (B, h, w) per grid. Each grid's per-cell pixel
    counts are summed from the finest grid already counted that divides it (integer sums, exact in float32), so the
    full-resolution mask is read once rather than once per grid; a grid that no counted grid divides is resized from
    the mask directly."""
    counts = {tuple(mask.shape[-2:]): (mask[:, None].float(), 1)}  # grid -> ((B, 1, h, w) pixel counts, cell area)
    out = {}
    for grid in sorted(set(grids), key=lambda g: -g[0] * g[1]):
        sources = [g for g in counts if g[0] % grid[0] == 0 and g[1] % grid[1] == 0]
        if not sources:
            out[grid] = resize_mask(mask, grid).float()
            continue
        source = min(sources, key=lambda g: g[0] * g[1])
        pixels, area = counts[source]
        factor = (source[0] // grid[0], source[1] // grid[1])
        if factor != (1, 1):
            pixels, area = F.avg_pool2d(pixels, factor, divisor_override=1), area * factor[0] * factor[1]
            counts[grid] = (pixels, area)
        out[grid] = (pixels[:, 0] * 2 > area).float()
    return out


FIGURES = ("consensus_mean", "consensus_foreground", "consensus_background", "energy_foreground_teacher",
           "energy_foreground_student", "foreground_area")


def foreground_figures(similarity: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor,
                       foreground: torch.Tensor) -> dict[str, torch.Tensor]:
    """ADM's two findings as numbers per image.

    Args:
        similarity: (B, h, w) consensus similarity.
        teacher, student: (B, C, h', w') features of the same stage.
        foreground: (B, H, W) bool foreground mask at any resolution (at the similarity's, it is used as is).

    Returns:
        (B,) tensors: ``consensus_mean``, ``consensus_foreground``, ``consensus_background`` (NaN where an image
        has no foreground or no background cell), ``energy_foreground_teacher`` and
        ``energy_foreground_student`` (share of squared feature norm on foreground cells), and
        ``foreground_area`` (share of cells that are foreground).
    """
    grid = similarity.shape[-2:]
    fg = (foreground if foreground.shape[-2:] == grid else resize_mask(foreground, grid)).float()
    energies = [F.interpolate(_pool(x).square().sum(1, keepdim=True), size=grid, mode="area")[:, 0]
                for x in (teacher, student)]
    return dict(zip(FIGURES, _stacked_figures(similarity, *energies, fg).unbind(-1), strict=True))


SIMILARITY = {"affinity": affinity_consensus, "projection": projected_consensus}


@dataclass
class ConsensusAnalysis:
    """Everything the Analysis tab shows for a batch, as tensors on the features' device.

    ``similarity``: P maps (B, h_p, w_p), one per matched stage pair; ``weights``: (P, 2, B, H, W) consensus and
    divergence weights, each map scaled to [0, 1] and resized to ``size`` (None when no size was asked);
    ``figures``: (P, B, 6) in the order of :data:`FIGURES`; ``cka``: (T, S).
    """

    similarity: list[torch.Tensor]
    weights: torch.Tensor | None
    figures: torch.Tensor
    cka: torch.Tensor | None
    consensus_chance: torch.Tensor | None = None  # (P, B): mean consensus with the student's locations shuffled
    # (P, B, 2): the same over the foreground cells and over the background cells (NaN where an image has none)
    consensus_chance_regions: torch.Tensor | None = None
    cka_chance: torch.Tensor | None = None  # (T, S): CKA with the student's locations shuffled


def _stacked_figures(similarity: torch.Tensor, energy_teacher: torch.Tensor, energy_student: torch.Tensor,
                     fg: torch.Tensor) -> torch.Tensor:
    """(B, 6) figures in the order of :data:`FIGURES` from (B, h, w) maps on the similarity's grid: the two sides'
    squared feature norms and ``fg``, the foreground as float 0/1."""
    n = fg.shape[-1] * fg.shape[-2]
    maps = torch.stack([similarity, energy_teacher, energy_student, fg], 1)  # (B, 4, h, w)
    total = maps.sum((2, 3))  # (B, 4): similarity, teacher energy, student energy, foreground cells
    on_fg = (maps * fg[:, None]).sum((2, 3))
    on_bg = total - on_fg
    fg_cells = total[:, 3:]
    bg_cells = n - fg_cells
    # 0 / 0 = NaN where an image has no foreground (or no background) cell
    return torch.cat([total[:, :1] / n, on_fg[:, :1] / fg_cells, on_bg[:, :1] / bg_cells,
                      on_fg[:, 1:3] / total[:, 1:3].clamp_min(1e-12), fg_cells / n], 1)


def _scaled_weights(similarity: torch.Tensor, tau: float, size: tuple[int, int]) -> torch.Tensor:
    """(2, B, H, W): consensus and divergence weights of a (B, h, w) similarity, each scaled to [0, 1], resized."""
    if not float(tau) > 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    b, h, w = similarity.shape
    weights = (torch.stack([similarity, 1.0 - similarity]) / float(tau)).flatten(2).softmax(-1)  # (2, B, h*w)
    low, high = weights.aminmax(dim=-1, keepdim=True)
    scaled = ((weights - low) / (high - low).clamp_min(1e-12)).reshape(2 * b, 1, h, w)
    return F.interpolate(scaled, size=size, mode="bilinear", align_corners=False).reshape(2, b, *size)


def _location_order(n: int, device: torch.device) -> torch.Tensor:
    """The fixed random order of ``n`` locations the chance levels use (the same for every map of that grid)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)


def _shuffled_locations(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) with its h·w locations in :func:`_location_order`."""
    b, c, h, w = features.shape
    return features.flatten(2)[:, :, _location_order(h * w, features.device)].reshape(b, c, h, w)


_MAP_READERS: ContextVar[tuple[Callable[[torch.Tensor], None], ...]] = ContextVar("map_readers", default=())


@contextmanager
def reading_maps(reader: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Inside the block, :func:`analyse_stages` hands each map it analyses to ``reader`` right after its first read
    of it, while the map is still in cache: a caller that measures more from the same maps reads them for a
    fraction of a later pass's cost (the dataset report pools them for CKA across images: ~0.8 ms a batch of 16
    Shapes scenes there, ~2 ms after the consensus). ``reader`` gets every map as given in ``pairs`` (each teacher
    map once however many students face it), (B, C, h, w), and must not modify it; maps of more than
    :data:`MAX_LOCATIONS` locations, which the consensus reads only to pool them, are handed over all the same.
    Only this thread's or task's analyses call it (and tasks it starts inside the block); gone on exit, also after
    an error.

    Args:
        reader: called as ``reader(features)``; what it returns is ignored.

    Yields:
        None.
    """
    token = _MAP_READERS.set((*_MAP_READERS.get(), reader))
    try:
        yield
    finally:
        _MAP_READERS.reset(token)


def _read(maps: list[torch.Tensor], handed: set[int]) -> None:
    """Hand each of ``maps`` not yet in ``handed`` (ids) to this call's :func:`reading_maps` readers, if any."""
    readers = _MAP_READERS.get()
    if not readers:
        return
    for features in maps:
        if id(features) not in handed:
            handed.add(id(features))
            for reader in readers:
                reader(features)


def analyse_stages(pairs: list[tuple[torch.Tensor, torch.Tensor]], methods: list[str], foreground: torch.Tensor,
                   tau: float, size: tuple[int, int] | None, teacher_all: list[torch.Tensor],
                   student_all: list[torch.Tensor], with_cka: bool = True) -> ConsensusAnalysis:
    """Consensus, divergence, ADM's figures and CKA for matched stages, batched and without host syncs.

    Args:
        pairs: P matched (teacher, student) maps, (B, C, h, w) each. Several students' pairs may share one teacher
            map (the same tensor object): its pooling and own affinity sums are then computed once.
        methods: the similarity of each pair, a key of :data:`SIMILARITY`.
        foreground: (B, H, W) bool foreground; resized once per distinct grid.
        tau: softmax temperature of the weights, > 0.
        size: (H, W) of the returned weight maps (e.g. the displayed image's); None: no weight maps (figures only).
        teacher_all, student_all: every stage of each side, for the CKA matrix.
        with_cka: compute the CKA matrix over the batch's locations and the chance levels of CKA and of each
            pair's mean consensus (the student's locations shuffled); False: all three are None (a batch of several
            images would mix their locations in the CKA).

    Returns:
        A :class:`ConsensusAnalysis`; nothing is read back to the host. Inside :func:`reading_maps`, each map is also
        handed to the block's reader as it is read.
    """
    # Each pair is pooled once (the similarity and the energies use the same maps). Pairs on one grid then run as
    # one batch: the affinity method's per-location sums do not depend on the channel widths, so a CNN's stages of
    # different widths pooled to one grid share every step after their Gram products; pairs of equal shapes (a
    # ViT's blocks) share those products too. The projection method batches pairs of equal shapes only.
    pooled: dict[int, torch.Tensor] = {}  # a teacher map several students face is pooled once, and stays one object
    fitted = []
    for t, s in pairs:
        fitted.append(_fit_grid(t, s, pooled.get(id(t))))
        pooled.setdefault(id(t), fitted[-1][0])
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    for k, ((t, s), method) in enumerate(zip(fitted, methods, strict=True)):
        shapes = (tuple(t.shape), tuple(s.shape))
        key = (tuple(t.shape[-2:]), method) if method == "affinity" else (shapes, method)
        groups.setdefault(key, {}).setdefault(shapes, []).append(k)
    masks = foreground_cells(foreground, [tuple(t.shape[-2:]) for t, _ in fitted])  # one float mask per grid
    b = foreground.shape[0]
    similarity, figures, weights = [None] * len(pairs), [None] * len(pairs), [None] * len(pairs)

    def cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return torch.cat(tensors, dim) if len(tensors) > 1 else tensors[0]

    chance: list[torch.Tensor | None] = [None] * len(pairs)
    chance_regions: list[torch.Tensor | None] = [None] * len(pairs)
    handed: set[int] = set()  # maps given to reading_maps' readers (each once)
    for (_, method), by_shape in groups.items():
        order, sims, shuffled, norm_t, norm_s = [], [], [], [], []
        for members in by_shape.values():
            order += members
            s = cat([fitted[k][1] for k in members])
            norm_s.append(channel_norms(s))
            _read([pairs[k][1] for k in members], handed)  # just read: still in cache
            if method == "affinity":  # each distinct teacher map once, however many students face it
                distinct = list({id(fitted[k][0]): fitted[k][0] for k in members}.values())
                teacher_of = [next(j for j, t in enumerate(distinct) if t is fitted[k][0]) for k in members]
                t = cat(distinct)
                norms = (channel_norms(t), norm_s[-1])
                _read([pairs[k][0] for k in members], handed)
                norm_t.append(_for_pairs(norms[0], teacher_of))
                sims.append(_affinity_terms(t, s, norms=norms, teacher_of=teacher_of))
            else:
                t = cat([fitted[k][0] for k in members])
                norm_t.append(channel_norms(t))
                _read([pairs[k][0] for k in members], handed)
                sims.append(SIMILARITY[method](t, s))
            if with_cka:  # the chance level: the student's locations in a fixed random order
                locations = _location_order(t.shape[-2] * t.shape[-1], t.device)
                shuffled.append(_shuffled_affinity_terms(t, s, sims[-1], locations, norms=norms,
                                                         teacher_of=teacher_of) if method == "affinity"
                                else SIMILARITY[method](t, _shuffled_locations(s)))
        h, w = norm_t[0].shape[-2:]
        if method == "affinity":  # the five sums of every shape, stacked along the batch
            sim = _affinity_from_terms(tuple(cat(list(terms)) for terms in zip(*sims, strict=True)), h * w)
            sim = sim.reshape(-1, h, w)
            other = _affinity_from_terms(tuple(cat(list(terms)) for terms in zip(*shuffled, strict=True)), h * w) \
                if with_cka else None
        else:
            sim = cat(sims)
            other = cat(shuffled) if with_cka else None
        if other is not None:
            means = other.reshape(other.shape[0], -1).nanmean(-1)
            for i, k in enumerate(order):
                chance[k] = means[i * b:(i + 1) * b]
        grid = (h, w)
        fg = masks[grid].repeat(len(order), 1, 1) if len(order) > 1 else masks[grid]
        found = _stacked_figures(sim, cat(norm_t).square(), cat(norm_s).square(), fg)  # energies: squared norms
        if other is not None:  # the chance level on the foreground and on the background cells (0 / 0: NaN)
            shuffled_map = other.reshape(-1, h, w)
            on_fg, cells = (shuffled_map * fg).sum((1, 2)), fg.sum((1, 2))
            regions = torch.stack([on_fg / cells, (shuffled_map.sum((1, 2)) - on_fg) / (h * w - cells)], 1)
            for i, k in enumerate(order):
                chance_regions[k] = regions[i * b:(i + 1) * b]
        scaled = _scaled_weights(sim, tau, size) if size is not None else None
        for i, k in enumerate(order):
            similarity[k], figures[k] = sim[i * b:(i + 1) * b], found[i * b:(i + 1) * b]
            weights[k] = scaled[:, i * b:(i + 1) * b] if scaled is not None else None
    cka, cka_chance = cka_matrices(teacher_all, student_all) if with_cka else (None, None)
    return ConsensusAnalysis(similarity, torch.stack(weights).clamp(0, 1) if size is not None else None,
                             torch.stack(figures), cka,
                             consensus_chance=torch.stack(chance) if with_cka else None, cka_chance=cka_chance,
                             consensus_chance_regions=torch.stack(chance_regions) if with_cka else None)
