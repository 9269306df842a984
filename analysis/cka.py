"""CKA across images: how alike two models' representations of the same images are, with the unbiased estimator.

Kornblith et al. (2019), "Similarity of Neural Network Representations Revisited", define linear CKA over the
examples of a dataset: each image is one sample, its whole feature map (C·h·w numbers) the representation. Nguyen
et al. (2021), "Do Wide and Deep Networks Learn the Same Things?", compute it over minibatches with the unbiased
HSIC estimator of Song et al. (2012), averaging HSIC over batches before the ratio:

    CKA = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b))

where ``K_b = X_b X_bᵀ`` and ``L_b = Y_b Y_bᵀ`` are the (n, n) Gram matrices of one batch. The unbiased estimator
removes the biased one's floor (unrelated features of a few samples score far above 0 with it), so CKA of
independent features is ~0 and can come out slightly negative; a model against itself is 1.

Pure torch, device-agnostic; nothing is read back to the host.
"""

from __future__ import annotations

import torch

MIN_SAMPLES = 4  # HSIC₁ divides by n(n - 3): defined from four images per batch


def gram(features: torch.Tensor) -> torch.Tensor:
    """(n, ...) features of n images -> (n, n) float32 Gram matrix of their flattened representations, scaled by the
    largest magnitude first (CKA does not depend on the scale; a float32 product would overflow at ~1e20)."""
    if features.dim() == 4 and features.is_contiguous(memory_format=torch.channels_last):
        features = features.permute(0, 2, 3, 1)  # flattened in memory order (a view): the Gram does not see the order
    x = features.reshape(features.shape[0], -1).float()
    x = x / x.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    return x @ x.T


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 - the paper's names
    """Unbiased HSIC₁ (Song et al. 2012, eq. 5) of (..., n, n) Gram matrices, n >= 4; (...) values.

    ``HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3))`` with K̃, L̃ the Gram
    matrices with zeroed diagonals.
    """
    n = k.shape[-1]
    if n < MIN_SAMPLES:
        raise ValueError(f"unbiased HSIC needs at least {MIN_SAMPLES} samples, got {n}")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k, l = k.masked_fill(eye, 0), l.masked_fill(eye, 0)  # noqa: E741
    trace = (k * l.transpose(-1, -2)).sum((-1, -2))
    sums = k.sum((-1, -2)) * l.sum((-1, -2)) / ((n - 1) * (n - 2))
    cross = (k.sum(-1) * l.sum(-2)).sum(-1)  # 1ᵀ K̃ L̃ 1
    return (trace + sums - 2.0 / (n - 2) * cross) / (n * (n - 3))


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64: a random order of ``n`` items in which none keeps its place and each appears once (one random
    n-cycle), for pairing every image with another image's features."""
    cycle = torch.randperm(n, generator=generator)
    order = torch.empty_like(cycle)
    order[cycle] = cycle.roll(-1)
    return order


def hsic_parts(grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, n, n) Gram matrices -> their zero-diagonal forms flattened (K, n²), row sums (K, n) and totals (K,): what
    every pairwise unbiased HSIC needs (:func:`hsic_pairs`, :func:`hsic_self`)."""
    n = grams.shape[-1]
    zeroed = grams.masked_fill(torch.eye(n, dtype=torch.bool, device=grams.device), 0)
    rows = zeroed.sum(-1)
    return zeroed.flatten(1), rows, rows.sum(-1)


def hsic_pairs(a: tuple, b: tuple, n: int) -> torch.Tensor:
    """(A, B) :func:`hsic_unbiased` of every pair of Gram matrices, from :func:`hsic_parts`, as three matrix products
    (no (A, B, n, n) tensor)."""
    flat_a, rows_a, sums_a = a
    flat_b, rows_b, sums_b = b
    trace = flat_a @ flat_b.T  # tr(K̃ L̃) for symmetric matrices
    return (trace + sums_a[:, None] * sums_b[None] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rows_a @ rows_b.T)) \
        / (n * (n - 3))


def hsic_self(parts: tuple, n: int) -> torch.Tensor:
    """(K,) :func:`hsic_unbiased` of each Gram matrix with itself, from :func:`hsic_parts` (the diagonal of
    :func:`hsic_pairs` without the other pairs)."""
    flat, rows, sums = parts
    return (flat.square().sum(1) + sums.square() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows.square().sum(1)) \
        / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA between every teacher stage and every student stage over all the images seen, batch by batch
    (Nguyen et al. 2021), and the same against the student's features of *other* images (the batch permuted): the
    level CKA reaches when the two representations are unrelated but have these widths and this batch size.

    Use: ``cka = MinibatchCKA(); cka.update(teacher_maps, student_maps)`` per batch (lists of (n, C, h, w) or any
    (n, ...) tensors of the same n images), then ``cka.matrix()`` and ``cka.baseline()``, (T, S) each.
    """

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator or torch.Generator().manual_seed(0)
        self.cross = self.cross_shuffled = self.self_t = self.self_s = None
        self.batches = 0

    def update(self, teacher: list[torch.Tensor], student: list[torch.Tensor]) -> None:
        """Add one batch: T teacher maps and S student maps, each (n, ...) for the same n >= 4 images."""
        n = teacher[0].shape[0]
        if n < MIN_SAMPLES:
            raise ValueError(f"a CKA batch needs at least {MIN_SAMPLES} images, got {n}")
        device = teacher[0].device
        kt = torch.stack([gram(t) for t in teacher])  # (T, n, n)
        ks = torch.stack([gram(s.to(device)) for s in student])  # (S, n, n)
        order = derangement(n, self.generator).to(device)
        shuffled = ks[:, order][:, :, order]
        parts_t, parts_s = hsic_parts(kt), hsic_parts(ks)
        cross = hsic_pairs(parts_t, parts_s, n)  # (T, S)
        cross_shuffled = hsic_pairs(parts_t, hsic_parts(shuffled), n)
        self_t, self_s = hsic_self(parts_t, n), hsic_self(parts_s, n)
        if self.batches == 0:
            self.cross, self.cross_shuffled, self.self_t, self.self_s = cross, cross_shuffled, self_t, self_s
        else:
            self.cross, self.cross_shuffled = self.cross + cross, self.cross_shuffled + cross_shuffled
            self.self_t, self.self_s = self.self_t + self_t, self.self_s + self_s
        self.batches += 1

    def _ratio(self, cross: torch.Tensor) -> torch.Tensor:
        norms = (self.self_t[:, None] * self.self_s[None]).clamp_min(0).sqrt()
        return torch.where(norms > 0, cross / norms.clamp_min(torch.finfo(torch.float32).tiny),
                           torch.full_like(cross, float("nan")))

    def matrix(self) -> torch.Tensor:
        """(T, S) CKA over every image seen; NaN where a side's features are constant over the images."""
        if not self.batches:
            raise ValueError("no batch was added")
        return self._ratio(self.cross)

    def baseline(self) -> torch.Tensor:
        """(T, S) CKA of the teacher's features against the student's features of other images (chance level)."""
        if not self.batches:
            raise ValueError("no batch was added")
        return self._ratio(self.cross_shuffled)


def dataset_cka(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """CKA over one batch of images and its permuted-images baseline: ``(matrix, baseline)``, (T, S) each."""
    cka = MinibatchCKA()
    cka.update(teacher, student)
    return cka.matrix(), cka.baseline()
