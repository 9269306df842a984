"""Builtin Shapes models: a small CNN encoder with a top-down decoder and a task head.

Teacher and student share this code and differ only in their :class:`ShapesNetConfig` (data, not code).
Detection is CenterNet-style (class heatmaps, box sizes and sub-cell offsets at stride 4); segmentation
predicts per-pixel logits at stride 2, upsampled to the input size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

DETECTION_STRIDE = 4
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.25, 0.25, 0.25)
assert len(set(IMAGE_MEAN)) == len(set(IMAGE_STD)) == 1, "normalise applies one mean and deviation to every channel"


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised as the builtin models expect (channels-last in memory,
    as the images come). The channels share one mean and deviation, so they are applied as numbers: a per-channel
    tensor would broadcast over the innermost axis of three and cost ~7x as much on the CPU."""
    pixels = torch.div(images.permute(0, 3, 1, 2).float(), 255.0)  # a new tensor, even from float32 images
    return pixels.sub_(IMAGE_MEAN[0]).div_(IMAGE_STD[0])


@dataclass(frozen=True)
class ShapesNetConfig:
    task: str  # "detection" | "segmentation"
    widths: tuple[int, ...]  # channels at strides 2, 4, 8, 16
    depth: int  # 3x3 convs per encoder stage
    decoder_width: int
    num_classes: int  # detection: shapes; segmentation: shapes + background

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShapesNetConfig:
        data = json.loads(text)
        return cls(**{**data, "widths": tuple(data["widths"])})


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesNet(nn.Module):
    """Encoder (strides 2, 4, 8, 16) -> top-down decoder -> task head.

    ``forward(x)`` takes (B, 3, H, W) normalised images with H, W multiples of 16 and returns a dict:
    detection: ``heatmap`` (B, 5, H/4, W/4) logits, ``size`` (B, 2, H/4, W/4) log box size in cells,
    ``offset`` (B, 2, H/4, W/4); segmentation: ``logits`` (B, 6, H, W). ``features`` holds the encoder
    stage outputs, finest first.
    """

    def __init__(self, config: ShapesNetConfig):
        super().__init__()
        self.config = config
        widths, d = config.widths, config.decoder_width
        stages, cin = [], 3
        for w in widths:
            stages.append(nn.Sequential(_conv(cin, w, stride=2), *[_conv(w, w) for _ in range(config.depth - 1)]))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(w, d, 1) for w in widths)
        finest = 1 if config.task == "detection" else 0  # decode down to stride 4 or stride 2
        self.finest = finest
        self.smooth = nn.ModuleList(_conv(d, d) for _ in widths[finest:-1])
        if config.task == "detection":  # one head: class heatmaps, then log size (2) and offset (2)
            self.head = nn.Sequential(_conv(d, d), nn.Conv2d(d, config.num_classes + 4, 1))
            nn.init.constant_(self.head[-1].bias[: config.num_classes], -2.19)  # prior 0.1, as in CenterNet
        else:
            self.head = nn.Conv2d(d, config.num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs at strides 2, 4, 8, 16: list of (B, C_i, H/s_i, W/s_i)."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = self.laterals[-1](features[-1])
        for level in range(len(features) - 2, self.finest - 1, -1):
            lateral = self.laterals[level](features[level])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            top = self.smooth[level - self.finest](top)
        return top

    def forward_intermediates(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The usual outputs and the encoder maps (strides 2, 4, 8, 16), as timm's method of this name gives
        a model's features without hooks."""
        out = self(x)
        return out, out["features"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.forward_features(x)
        decoded = self.decode(features)
        raw = self.head(decoded)
        if self.config.task == "segmentation":
            logits = F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return {"logits": logits, "features": features}
        heatmap, size, offset = raw.split([self.config.num_classes, 2, 2], dim=1)
        return {"heatmap": heatmap, "size": size, "offset": offset, "features": features}


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 3, 1, 1)`` as two separable maxima of shifted views: the same values, ~10x faster on the
    CPU (whose max-pool kernel also computes indices)."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def detection_candidates(out: dict[str, torch.Tensor], max_detections: int = 100, cells: bool = False,
                         ) -> tuple[torch.Tensor, ...]:
    """The ``max_detections`` highest heatmap peaks of each image as boxes, with no threshold (no host sync).

    Returns:
        ``(boxes, scores, labels)``: (B, K, 4) xyxy in network-input pixels, (B, K), (B, K) in 1..5; with ``cells``
        also (B, K) the flat heat-map cell (``y * w + x``) each box was decoded from.
    """
    heat = out["heatmap"].contiguous().sigmoid()  # a slice of the head's channels-last output: gathered first
    peaks = heat * (_max3x3(heat) == heat)
    b, c, h, w = peaks.shape
    scores, index = peaks.flatten(1).topk(min(max_detections, c * h * w))
    labels, cell = index // (h * w), index % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    size = out["size"].flatten(2).gather(2, cell[:, None].expand(-1, 2, -1)).exp()  # (B, 2, K) in cells
    offset = out["offset"].flatten(2).gather(2, cell[:, None].expand(-1, 2, -1))
    cx, cy = (xs + offset[:, 0]) * DETECTION_STRIDE, (ys + offset[:, 1]) * DETECTION_STRIDE
    bw, bh = size[:, 0] * DETECTION_STRIDE, size[:, 1] * DETECTION_STRIDE
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    return (boxes, scores, labels + 1, cell) if cells else (boxes, scores, labels + 1)


def decode_detections(out: dict[str, torch.Tensor], threshold: float, max_detections: int = 100,
                      ) -> list[dict[str, torch.Tensor]]:
    """Turn CenterNet outputs into boxes in network-input pixels.

    Args:
        out: ``ShapesNet`` detection outputs for a batch of B images.
        threshold: minimum score kept.
        max_detections: at most this many peaks per image.

    Returns:
        B dicts with ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,) in 1..5 (0 is background).
    """
    boxes, scores, labels = detection_candidates(out, max_detections)
    results = []
    for i in range(len(boxes)):
        keep = scores[i] >= threshold
        results.append({"boxes": boxes[i][keep], "scores": scores[i][keep], "labels": labels[i][keep]})
    return results
