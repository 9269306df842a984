"""The builtin Shapes CNNs (``weights/shapes/nets.py``): CenterNet-style detectors and encoder-decoder segmenters,
from the safetensors checkpoints in ``weights/checkpoints``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.weak import WeakTensorKeyDictionary

from analysis.features import intermediates_stages
from weights.families import Family, Geometry, ModelUnavailableError, register_family
from weights.shapes.checkpoints import BUILTIN_DIR, load_named_checkpoint
from weights.shapes.nets import detection_candidates, normalise


def builtin_pixels(image: np.ndarray, policy: dict) -> tuple[torch.Tensor, Geometry]:
    """Resize so the short side is ``short_side`` (long side capped at ``max_side``), pad to ``multiple``.

    Args:
        image: RGB uint8 (H, W, 3).
        policy: ``{"short_side", "max_side", "multiple"}`` (the pair's ``preprocessing``).

    Returns:
        ``(pixels, geometry)``: (1, 3, h, w) float32 normalised and zero-padded, and the resize it made.
    """
    return builtin_pixels_batch(torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0), policy)


def builtin_pixels_batch(images: torch.Tensor, policy: dict) -> tuple[torch.Tensor, Geometry]:
    """:func:`builtin_pixels` of (B, H, W, 3) uint8 images of one size at once: (B, 3, h, w) float32 and their one
    geometry (each image's pixels are those it gets alone)."""
    height, width = images.shape[1:3]
    scale = min(policy["short_side"] / min(height, width), policy["max_side"] / max(height, width))
    rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    pixels = normalise(images)
    if (rh, rw) != (height, width):  # (at its own size the resampling is the identity: skipped)
        pixels = F.interpolate(pixels, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    m = policy["multiple"]
    ph, pw = max(-(-rh // m) * m, 2 * m), max(-(-rw // m) * m, 2 * m)
    if (ph, pw) != (rh, rw):
        pixels = F.pad(pixels, (0, pw - rw, 0, ph - rh))
    return pixels, Geometry(height, width, rh, rw)


def box_cell(box: list[float], geometry: Geometry, grid: tuple[int, int], padded: tuple[int, int]) -> tuple[int, int]:
    """The heat-map cell under a box centre (input pixels -> network grid)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    sx, sy = geometry.resized_width / geometry.width, geometry.resized_height / geometry.height
    return (min(int(cy * sy * grid[0] / padded[0]), grid[0] - 1), min(int(cx * sx * grid[1] / padded[1]), grid[1] - 1))


_CANDIDATES = WeakTensorKeyDictionary()  # keyed by identity (a tensor's == is elementwise)


def _candidates(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The batch's detection candidates, decoded once per forward's outputs (the boxes and the analysis' foreground
    both read them); remembered only while the outputs live."""
    key = outputs["heatmap"]
    if key not in _CANDIDATES:
        _CANDIDATES[key] = detection_candidates(outputs)
    return _CANDIDATES[key]


@register_family
class ShapesFamily(Family):
    name = "shapes"
    classes = ("ShapesNet",)
    explicit_stages = True

    def load(self, source, device, dtype):
        self.check(source)
        try:
            model = load_named_checkpoint(source.location)
        except FileNotFoundError as error:
            raise ModelUnavailableError(str(error)) from error
        return model.to(device=device, dtype=dtype).eval(), None

    def default_dtype(self, device, source):
        return torch.float32  # tiny models: fp32 keeps CPU and GPU alike

    def weights_file(self, source):
        return BUILTIN_DIR / f"{source.location}.safetensors"

    def prepare(self, predictor, image):
        pixels, geometry = builtin_pixels(image, predictor.pair.preprocessing)
        return {"pixel_values": pixels.to(predictor.device, predictor.dtype)}, geometry

    def prepare_many(self, predictor, images):
        # images of one size are normalised (and resized) as one batch; each keeps a (1, 3, h, w) row of it, which
        # compare.vision.batches puts back together without a copy
        sizes: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            sizes.setdefault(image.shape, []).append(i)
        out: list = [None] * len(images)
        for members in sizes.values():
            stacked = torch.from_numpy(np.stack([images[i] for i in members]))
            pixels, geometry = builtin_pixels_batch(stacked, predictor.pair.preprocessing)
            pixels = pixels.to(predictor.device, predictor.dtype)
            for row, i in enumerate(members):
                out[i] = ({"pixel_values": pixels[row:row + 1]}, geometry)
        return out

    def prepare_key(self, predictor):
        return ("shapes", tuple(sorted(predictor.pair.preprocessing.items())), predictor.device, predictor.dtype)

    def stages(self, model, pixels):
        return intermediates_stages(model, pixels)

    def detections(self, predictor, outputs, geometries, threshold):
        # every candidate, scaled to each image in one op; the predictor keeps those above the threshold on the host
        boxes, scores, labels = _candidates(outputs)
        scale = torch.tensor([[g.width / g.resized_width, g.height / g.resized_height] * 2 for g in geometries],
                             dtype=boxes.dtype, device=boxes.device)[:, None]
        limit = torch.tensor([[g.width, g.height] * 2 for g in geometries], dtype=boxes.dtype,
                             device=boxes.device)[:, None]
        boxes = torch.minimum((boxes * scale).clamp_min(0), limit)
        return {"boxes": boxes, "scores": scores, "labels": labels}  # (B, K, ...): as many candidates per image

    def detection_candidates(self, predictor, outputs, geometry, height, width, index=0):
        rows = [index] if isinstance(index, int) else index
        boxes, scores, _ = (c[rows] for c in _candidates(outputs))
        scale = torch.tensor([width / geometry.resized_width, height / geometry.resized_height] * 2,
                             dtype=boxes.dtype, device=boxes.device)
        boxes = boxes * scale
        return (boxes[0], scores[0]) if isinstance(index, int) else (boxes, scores)

    def segmentation_logits(self, predictor, outputs, geometry, index=0):
        # builtin logits are at the padded input's size: keep the image part
        return outputs["logits"][index:index + 1, :, : geometry.resized_height, : geometry.resized_width]

    def class_maps(self, predictor, outputs, geometries):
        maps = []
        for i, geometry in enumerate(geometries):
            logits = self.segmentation_logits(predictor, outputs, geometry, i).float()
            maps.append(F.interpolate(logits, size=(geometry.height, geometry.width), mode="bilinear",
                                      align_corners=False)[0].argmax(0))
        return maps

    def detection_score(self, predictor, outputs: Any, box, label, geometry, padded):
        """The heat-map logit at the cell the detection was decoded from (its peak: CenterNet's sub-cell offset can
        put the box centre in a neighbouring cell), found as the candidate of that class whose box is the target's;
        the cell under the box centre when none is."""
        from torchvision.ops import box_iou

        width = outputs["heatmap"].shape[-1]
        with torch.no_grad():
            boxes, _, labels, cells = detection_candidates(
                {k: outputs[k][:1].detach() for k in ("heatmap", "size", "offset")}, cells=True)
            scale = torch.tensor([geometry.resized_width / geometry.width, geometry.resized_height / geometry.height]
                                 * 2, device=boxes.device)
            overlap = box_iou(boxes[0], (torch.tensor(box, device=boxes.device) * scale)[None])[:, 0]
            overlap = overlap.masked_fill(labels[0] != label, -1.0)
        best = int(overlap.argmax())
        if float(overlap[best]) > 0.5:
            y, x = divmod(int(cells[0, best]), width)
        else:
            y, x = box_cell(box, geometry, outputs["heatmap"].shape[-2:], padded)
        return outputs["heatmap"][:, label - 1, y, x]
