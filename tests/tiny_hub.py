"""Tiny models of the Hub pairs' transformers classes, saved with ``save_pretrained`` to a folder.

They exercise exactly the loading code real users run (``from_pretrained(path)``), with no network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrImageProcessor,
    RTDetrResNetConfig,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
)

TINY_LABELS = ["person", "cat", "cup"]


def save_tiny_rtdetr(folder: Path, seed: int, width: int = 32) -> Path:
    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 32], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[16, 32, 32], encoder_hidden_dim=width, d_model=width,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        decoder_layers=1, num_queries=20, decoder_in_channels=[width] * 3, num_denoising=0,
        id2label=dict(enumerate(TINY_LABELS)), label2id={n: i for i, n in enumerate(TINY_LABELS)},
        use_pretrained_backbone=False)
    RTDetrForObjectDetection(config).save_pretrained(folder)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def save_tiny_segformer(folder: Path, seed: int, width: int = 16) -> Path:
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[width, 2 * width],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
        decoder_hidden_size=32, num_labels=len(TINY_LABELS) + 1,
        id2label=dict(enumerate(["wall", *TINY_LABELS])), label2id={})
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                             "head_width": 16},
             "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


def save_tiny_open_clip(folder: Path, architecture: str, seed: int) -> Path:
    """Register a tiny open_clip config and save a random model as ``open_clip_model.safetensors``."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{architecture}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    torch.manual_seed(seed)
    model = open_clip.create_model(architecture)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_tiny_diffusion(folder: Path) -> Path:
    """A random tiny text-to-image pipeline in diffusers format, with a block-removed student UNet beside it."""
    from diffusers import StableDiffusionPipeline

    from weights.shapes.diffusion import build_components

    parts = build_components(seed=0)
    student = parts.pop("unet_student")
    StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
    student.save_pretrained(folder / "unet_student", safe_serialization=True)
    return folder


def save_tiny_vit_classifier(folder: Path, seed: int, labels: list[str], width: int = 16) -> Path:
    """A tiny transformers ``ViTForImageClassification`` with its image processor (an
    ``AutoModelForImageClassification`` class)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=2 * width, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={n: i for i, n in enumerate(labels)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_tiny_timm(folder: Path, architecture: str, seed: int, labels: list[str], **kwargs) -> Path:
    """A tiny timm model written as the Hub keeps them (``save_for_hf``: config.json and model.safetensors)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model(architecture, num_classes=len(labels), **kwargs)
    save_for_hf(model, str(folder), model_config={"label_names": labels}, model_args=kwargs, safe_serialization=True)
    return folder


def save_tiny_open_clip_repo(folder: Path, seed: int) -> Path:
    """A tiny open_clip model as an ``hf-hub:`` repo keeps it: ``open_clip_config.json`` (model_cfg and
    preprocess_cfg) beside ``open_clip_model.safetensors``."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_tiny_unet_student(pipeline: Path, folder: Path) -> Path:
    """The tiny pipeline's block-removed student UNet on its own, in a folder of its own (config.json at the top)."""
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(pipeline / "unet_student").save_pretrained(folder, safe_serialization=True)
    return folder
