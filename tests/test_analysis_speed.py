"""The analysis as the GPU runs it: batched, no host syncs before the one read-back, every dtype and device."""

import numpy as np
import pytest
import timm
import torch

from analysis.consensus import analyse_stages, cka_matrix, foreground_cells, linear_cka, reading_maps, resize_mask
from analysis.features import capture_stages, match_stages, stack_images
from analysis.profiling import DispatchCounter
from analysis.readback import read_back
from compare.analysis import Side, analyse_sides
from compare.drawing import COLOUR_BAR_HEIGHT
from weights.predictors import Geometry, box_foreground
from weights.shapes.checkpoints import BUILTIN_CONFIGS
from weights.shapes.nets import ShapesNet, detection_candidates, normalise
from weights.shapes.world import render_scene


def test_the_dispatch_counter_counts_ops_and_each_kind_of_sync():
    x = torch.randn(10)
    with DispatchCounter() as counter:
        y = (x * 2).sum()
    assert counter.ops == 2 and counter.syncs == 0
    with DispatchCounter() as counter:
        float(y), x[x > 0], torch.nonzero(x)
    assert counter.syncs == 3 and set(counter.sync_ops) == {"_local_scalar_dense", "index", "nonzero"}


def test_read_back_returns_every_tensor_with_its_shape_and_dtype():
    tensors = {"ints": torch.arange(6).reshape(2, 3), "mask": torch.tensor([True, False, True]),
               "half": torch.randn(2, 2).to(torch.bfloat16), "bytes": torch.arange(5, dtype=torch.uint8)}
    host = read_back(tensors)
    assert host["ints"].tolist() == [[0, 1, 2], [3, 4, 5]] and host["mask"].tolist() == [True, False, True]
    assert host["half"].dtype == np.float32 and np.allclose(host["half"], tensors["half"].float().numpy())
    assert host["bytes"].tolist() == [0, 1, 2, 3, 4]


def test_the_stacked_cka_matrix_equals_pairwise_cka_on_a_shared_grid():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 12, 4, 4), torch.randn(2, 6, 4, 4)]
    matrix = cka_matrix(teacher, student)

    def rows(x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (4, 4))
        return pooled.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])

    expected = torch.tensor([[linear_cka(rows(t), rows(s)) for s in student] for t in teacher])
    assert matrix.shape == (2, 3) and torch.allclose(matrix, expected, atol=1e-5)


def test_isotropic_models_are_matched_at_evenly_spaced_depths():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=8).eval()
    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=4).eval()
    x = torch.randn(1, 3, 64, 64)
    pairs = match_stages(capture_stages(vit, x), capture_stages(small, x))
    assert [(t.name, s.name) for t, s in pairs] == [("block1", "block0"), ("block3", "block1"),
                                                  ("block5", "block2"), ("block7", "block3")]


def _maps(device, dtype):
    torch.manual_seed(0)
    teacher = [torch.randn(1, 24, 32, 32), torch.randn(1, 48, 16, 16), torch.randn(1, 96, 8, 8)]
    student = [torch.randn(1, 16, 32, 32), torch.randn(1, 32, 16, 16), torch.randn(1, 64, 8, 8)]
    return ([t.to(device, dtype) for t in teacher], [s.to(device, dtype) for s in student],
            (torch.rand(1, 64, 64) > 0.5).to(device))


@pytest.mark.parametrize("method", ["affinity", "projection"])
def test_the_analysis_runs_on_the_meta_device_so_it_never_reads_a_value_back(method):
    teacher, student, foreground = _maps("meta", torch.float32)
    result = analyse_stages(list(zip(teacher, student, strict=True)), [method] * 3, foreground, 0.1, (64, 64),
                            teacher, student)
    assert result.weights.shape == (3, 2, 1, 64, 64) and result.figures.shape == (3, 1, 6)
    assert result.cka.shape == (3, 3)


@pytest.mark.parametrize("grid", [32, 6, 80])  # through the C x C Grams, the (N, N) affinities; pooled maps
def test_students_facing_one_teacher_map_get_their_own_calls_figures(grid):
    """The report runs every student in one call, each teacher map's own sums computed once (two teacher maps of one
    shape here, as a ViT's blocks): each pair's figures, chance levels and weights are those of a call with that pair
    alone."""
    torch.manual_seed(0)
    teachers = [torch.randn(3, 48, grid, grid).relu() for _ in range(2)]
    students = [torch.randn(3, 32, grid, grid), teachers[0][:, :32] + 0.1 * torch.randn(3, 32, grid, grid)]
    pairs = [(teachers[0], students[0]), (teachers[1], students[1]), (teachers[0], students[1]),
             (teachers[1], students[0])]
    foreground = torch.rand(3, 64, 64) > 0.5
    together = analyse_stages(pairs, ["affinity"] * 4, foreground, 0.1, (64, 64), teachers, students)
    for k, pair in enumerate(pairs):
        alone = analyse_stages([pair], ["affinity"], foreground, 0.1, (64, 64), teachers, students)
        assert torch.allclose(together.figures[k], alone.figures[0], atol=1e-6, equal_nan=True)
        assert torch.allclose(together.consensus_chance[k], alone.consensus_chance[0], atol=1e-6)
        assert torch.allclose(together.weights[k], alone.weights[0], atol=1e-6)
    assert not torch.allclose(together.figures[0], together.figures[2], atol=1e-3)  # the pairs differ


def test_reading_maps_hands_each_map_once_to_this_call_only_and_changes_nothing():
    """What the dataset report pools for CKA while the consensus has each map in cache: every map of the pairs once
    (a teacher map two students face, once), only inside the block and only to the thread that opened it."""
    import threading

    torch.manual_seed(0)
    teacher = [torch.randn(4, 24, 16, 16).relu(), torch.randn(4, 48, 8, 8).relu()]
    students = [[torch.randn(4, 16, 16, 16), torch.randn(4, 32, 8, 8)],
                [torch.randn(4, 8, 16, 16), torch.randn(4, 16, 8, 8)]]
    pairs = [(t, s[k]) for s in students for k, t in enumerate(teacher)]
    foreground = torch.rand(4, 32, 32) > 0.5

    def analyse():
        return analyse_stages(pairs, ["affinity"] * 4, foreground, 0.1, None, [], [], with_cka=False)

    plain, seen = analyse(), []
    with reading_maps(seen.append):
        other_thread = threading.Thread(target=analyse)  # another user's analysis meanwhile: not this call's
        other_thread.start()
        other_thread.join()
        assert seen == []
        read = analyse()
    analyse()  # after the block: nothing more
    assert sorted(map(id, seen)) == sorted({id(x) for pair in pairs for x in pair}) and len(seen) == 6
    assert torch.equal(read.figures, plain.figures)


def test_half_precision_features_give_the_float32_answer():
    """The CUDA path runs the Hub models in fp16; bfloat16 on the CPU exercises the same casts."""
    teacher, student, foreground = _maps("cpu", torch.float32)
    pairs = list(zip(teacher, student, strict=True))
    full = analyse_stages(pairs, ["affinity"] * 3, foreground, 0.1, (64, 64), teacher, student)
    low = [[x.to(torch.bfloat16) for x in maps] for maps in (teacher, student)]
    half = analyse_stages(list(zip(*low, strict=True)), ["affinity"] * 3, foreground, 0.1, (64, 64), *low)
    assert half.weights.dtype == torch.float32
    assert torch.allclose(half.cka, full.cka, atol=0.02) and torch.allclose(half.figures, full.figures, atol=0.05,
                                                                            equal_nan=True)


def test_the_tabs_analysis_syncs_only_in_its_final_read_back():
    models = [ShapesNet(BUILTIN_CONFIGS[("detection", role)]).eval() for role in ("teacher", "student")]
    image = render_scene(10_000_007).image
    pixels = normalise(torch.from_numpy(image)[None])
    geometry = Geometry(128, 128, 128, 128)
    sides = [Side(m, pixels, geometry) for m in models]

    def foreground(outputs):
        boxes, scores, _ = detection_candidates(outputs)
        return box_foreground(boxes[0], scores[0], 0.3, 128, 128)

    with DispatchCounter() as counter:
        overlays, report = analyse_sides(*sides, foreground, image)
    assert counter.syncs == 0, counter.sync_ops  # on the CPU the read-back is no copy; on CUDA it is the one sync
    assert len(overlays) == 8 and overlays[0][0].shape == (128 + COLOUR_BAR_HEIGHT, 128, 3)  # image, colour bar
    assert len(report["cka"]["matrix"]) == 4 and len(report["stages"]) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_captured_graph_gives_the_eager_answer_on_cuda():
    from compare import analysis as analysis_tab

    models = [ShapesNet(BUILTIN_CONFIGS[("segmentation", role)]).cuda().eval() for role in ("teacher", "student")]
    image = render_scene(10_000_008).image
    pixels = normalise(torch.from_numpy(image)[None]).cuda()
    sides = [Side(m, pixels, Geometry(128, 128, 128, 128)) for m in models]

    def foreground(outputs):
        return outputs["logits"][0].argmax(0) != 0

    analysis_tab.USE_CUDA_GRAPHS = False
    eager = analyse_sides(*sides, foreground, image)
    analysis_tab.USE_CUDA_GRAPHS = True
    replays = [analyse_sides(*sides, foreground, image) for _ in range(3)]  # eager, capture, replay
    for overlays, report in replays:
        assert np.allclose(report["cka"]["matrix"], eager[1]["cka"]["matrix"], atol=2e-4)
        assert np.allclose([s["consensus_mean"] for s in report["stages"]],
                           [s["consensus_mean"] for s in eager[1]["stages"]], atol=2e-4)
        assert all(np.abs(a[0].astype(int) - b[0]).max() <= 1 for a, b in zip(overlays, eager[0], strict=True))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])  # both layouts of the products
@pytest.mark.parametrize("shape", [(512, 64, 10, 12), (16, 8, 40, 40)])  # the (N, N) path and the Gram path
def test_affinity_consensus_equals_the_correlation_of_explicit_affinity_rows(shape, layout):
    from analysis.consensus import affinity_consensus

    ct, cs, h, w = shape
    torch.manual_seed(0)
    teacher = torch.randn(2, ct, h, w).to(memory_format=layout)
    student = torch.randn(2, cs, h, w).to(memory_format=layout)

    def centred_rows(x):
        unit = torch.nn.functional.normalize(x.flatten(2).transpose(1, 2), dim=-1)
        rows = unit @ unit.transpose(1, 2)
        return rows - rows.mean(-1, keepdim=True)

    a, b = centred_rows(teacher), centred_rows(student)
    expected = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).reshape(2, h, w)
    assert torch.allclose(affinity_consensus(teacher, student), expected, atol=1e-5)


def test_box_foreground_is_the_union_of_the_confident_boxes():
    boxes = torch.tensor([[1.0, 1.0, 4.0, 3.0], [5.0, 0.0, 7.0, 7.0], [0.0, 0.0, 8.0, 8.0]])
    mask = box_foreground(boxes, torch.tensor([0.9, 0.5, 0.1]), 0.3, 8, 8)  # the last box is not confident
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:3, 1:4] = True
    expected[0:7, 5:7] = True
    assert torch.equal(mask, expected)


def test_box_foreground_paints_what_each_box_covers_pixel_by_pixel():
    """The difference-array union against the definition, box by box: half-pixel and integer edges, boxes past the
    image, empty and inverted boxes, a NaN box (covers nothing), an infinite edge, batched and single."""
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n, h, w = int(torch.randint(0, 12, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g)), \
            int(torch.randint(1, 40, (1,), generator=g))
        corner = torch.rand(2, n, 2, generator=g) * torch.tensor([w, h]) * 1.4 - 4
        if trial % 2:
            corner = corner.round() + 0.5 * torch.randint(0, 2, corner.shape, generator=g)
        boxes = torch.cat([corner, corner + torch.rand(2, n, 2, generator=g) * 20 - 2], -1)
        if n:
            boxes[0, 0, 1], boxes[1, 0, 3] = float("nan"), float("inf")
        scores = torch.rand(2, n, generator=g)
        ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
        expected = torch.zeros(2, h, w, dtype=torch.bool)
        for b in range(2):
            for (x0, y0, x1, y1), score in zip(boxes[b].tolist(), scores[b].tolist(), strict=True):
                if score >= 0.3:
                    expected[b] |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None]
        assert torch.equal(box_foreground(boxes, scores, 0.3, h, w), expected)
        assert torch.equal(box_foreground(boxes[1], scores[1], 0.3, h, w), expected[1])


def test_foreground_cells_are_resize_mask_on_every_grid():
    """Counts summed grid to grid give each grid's cells exactly as resizing the full mask would, ties at half
    included (not foreground), for grids that divide one another, grids that do not, and the mask's own grid."""
    g = torch.Generator().manual_seed(1)
    for (h, w) in [(128, 128), (96, 144), (100, 60), (7, 5)]:
        for level in (0.3, 0.5, 0.7):
            mask = torch.rand(3, h, w, generator=g) > level
            mask[0, :2, :2] = torch.tensor([[True, True], [False, False]])  # a 2x2 cell exactly half foreground
            grids = [(h, w), (max(1, h // 2), max(1, w // 2)), (max(1, h // 4), max(1, w // 4)),
                     (max(1, h // 3), max(1, w // 3)), (5, 7)]
            cells = foreground_cells(mask, grids)
            for grid in grids:
                assert torch.equal(cells[grid], resize_mask(mask, grid).float()), (h, w, grid)
    mask = torch.rand(2, 256, 192, generator=g) > 0.5  # 4 x 4 and 16 x 16 pixels a cell: the mask's two sums
    cells = foreground_cells(mask, [(64, 48), (16, 12)])
    assert all(torch.equal(cells[grid], resize_mask(mask, grid).float()) for grid in [(64, 48), (16, 12)])
    assert torch.equal(foreground_cells(mask, [(16, 12)])[(16, 12)], resize_mask(mask, (16, 12)).float())
    for dtype in (torch.uint8, torch.int32, torch.bfloat16):  # a mask of 0/1 numbers reads as the bool mask
        cells = foreground_cells(mask.to(dtype), [(64, 48), (1, 1)])
        assert all(torch.equal(cells[grid], resize_mask(mask, grid).float()) for grid in [(64, 48), (1, 1)]), dtype


def test_stack_images_is_cat_and_a_view_when_the_images_are_rows_of_one_batch():
    batch = torch.randn(5, 3, 8, 8)
    rows = [batch[k:k + 1, :, :6, :5] for k in range(1, 4)]  # cropped rows of one forward's output
    stacked = stack_images(rows)
    assert torch.equal(stacked, torch.cat(rows)) and stacked.data_ptr() == batch[1].data_ptr()
    apart = [batch[k:k + 1] for k in (0, 2, 3)]  # not consecutive: a copy
    assert torch.equal(stack_images(apart), torch.cat(apart))
    alone = [torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)]
    assert torch.equal(stack_images(alone), torch.cat(alone))
    leaf = torch.arange(12.0, requires_grad=True)
    rows = (leaf * 1).view(3, 4)
    weights = torch.arange(12.0).view(3, 4) + 1
    (stack_images([rows[k:k + 1] for k in range(3)]) * weights).sum().backward()
    assert torch.equal(leaf.grad, weights.flatten())  # every row gets its gradient, as through torch.cat


def test_the_tabs_batched_figures_are_adms_figures():
    """The tab's batched path and ``foreground_figures`` share one implementation; the background figure once read
    inf on the batched path only."""
    from analysis.consensus import FIGURES, affinity_consensus, foreground_figures

    teacher, student, foreground = _maps("cpu", torch.float32)
    result = analyse_stages(list(zip(teacher, student, strict=True)), ["affinity"] * 3, foreground, 0.1, (64, 64),
                            teacher, student)
    for k, (t, s) in enumerate(zip(teacher, student, strict=True)):
        expected = foreground_figures(affinity_consensus(t, s), t, s, foreground)
        assert torch.allclose(result.figures[k], torch.stack([expected[f] for f in FIGURES], -1), atol=1e-5)
    assert torch.isfinite(result.figures).all()
