"""The registry of teacher/student pairs. A pair is data: adding one touches this file only.

Each model names where it comes from (a builtin checkpoint under ``weights/checkpoints`` or a Hub repo with a
pinned revision) and the class that loads it; loading happens in :mod:`weights.loaders`, lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from weights.shapes.world import CLASS_NAMES

Task = Literal["detection", "segmentation", "classification", "generation"]
TASKS: tuple[str, ...] = ("detection", "segmentation", "classification", "generation")

APACHE = "Apache-2.0"
SEGFORMER_LICENCE = "NVIDIA Source Code License for SegFormer (non-commercial research use only)"
BUILTIN_LICENCE = "MIT (Distill Lens builtin, trained on the synthetic Shapes world)"
OPENAI_CLIP_LICENCE = "MIT (OpenAI CLIP weights)"
SD_LICENCE = "CreativeML OpenRAIL-M (Stable Diffusion 1.5 and its derivatives)"
MOBILECLIP_LICENCE = "Apple MobileCLIP model licence (research use; see apple/ml-mobileclip)"


@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from and which class loads it.

    ``kind`` is ``"builtin"`` (``location`` is a checkpoint name in ``weights/checkpoints``) or ``"hub"``
    (``location`` is a Hub repo id, or a local folder saved with ``save_pretrained``).
    ``subfolder`` names the folder of a repo that holds the model (a student UNet beside a teacher pipeline).
    ``lora`` names a LoRA weight file in ``location``: the model is then the teacher's UNet with that LoRA fused in,
    sampled with ``scheduler`` (a diffusers scheduler class name) instead of the teacher's.
    """

    kind: Literal["builtin", "hub"]
    location: str
    model_class: str
    revision: str | None = None
    processor_class: str | None = None
    subfolder: str | None = None
    lora: str | None = None
    scheduler: str | None = None
    architecture: str | None = None  # open_clip: the model config name (e.g. "ViT-B-32-quickgelu")
    pretrained_tag: str | None = None  # open_clip: the tag whose preprocessing the weights expect

    @property
    def display_name(self) -> str:
        return self.location if self.kind == "hub" else f"builtin:{self.location}"


@dataclass(frozen=True)
class Pair:
    name: str
    task: Task
    teacher: ModelSource
    student: ModelSource
    licence: str
    description: str = ""
    labels: tuple[str, ...] | None = None  # None: read from the model's own config
    preprocessing: dict = field(default_factory=dict)  # builtin pairs: resize policy
    native: dict = field(default_factory=dict)  # generation: width, height, steps, guidance (student_* overrides)

    @property
    def source(self) -> str:
        return "builtin" if self.teacher.kind == self.student.kind == "builtin" else "hub"

    def summary(self) -> dict:
        """The public description served by ``/pairs``."""
        summary = {"name": self.name, "task": self.task, "source": self.source,
                   "teacher": self.teacher.display_name, "student": self.student.display_name,
                   "licence": self.licence, "description": self.description}
        return summary | self.native

    def to_dict(self) -> dict:
        return asdict(self)


SHAPES_PREPROCESSING = {"short_side": 128, "max_side": 1024, "multiple": 16}


def _builtin(task: str, role: str) -> ModelSource:
    return ModelSource("builtin", f"shapes_{task}_{role}", model_class="ShapesNet")


def _open_clip(repo: str, architecture: str, tag: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="open_clip", revision="main", architecture=architecture,
                       pretrained_tag=tag)


SD15 = ModelSource("hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", model_class="StableDiffusionPipeline",
                   revision="main")


def _unet(repo: str, subfolder: str = "unet") -> ModelSource:
    return ModelSource("hub", repo, model_class="UNet2DConditionModel", revision="main", subfolder=subfolder)


CLIP_TEACHER = _open_clip("timm/vit_large_patch14_clip_224.openai", "ViT-L-14-quickgelu", "openai")


def _rtdetr(repo: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="RTDetrForObjectDetection", revision="main",
                       processor_class="RTDetrImageProcessor")


def _segformer(repo: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="SegformerForSemanticSegmentation", revision="main",
                       processor_class="SegformerImageProcessor")


_BUILTIN_AND_HUB_PAIRS: tuple[Pair, ...] = (
    Pair("shapes-detection", "detection", _builtin("detection", "teacher"), _builtin("detection", "student"),
         BUILTIN_LICENCE, "Builtin CenterNet-style CNNs on Shapes; the student is distilled from the teacher.",
         labels=CLASS_NAMES, preprocessing=SHAPES_PREPROCESSING),
    Pair("shapes-segmentation", "segmentation", _builtin("segmentation", "teacher"),
         _builtin("segmentation", "student"), BUILTIN_LICENCE,
         "Builtin encoder-decoder CNNs on Shapes; the student is distilled from the teacher.",
         labels=CLASS_NAMES, preprocessing=SHAPES_PREPROCESSING),
    Pair("rtdetr-r101vd-to-r18vd", "detection", _rtdetr("PekingU/rtdetr_r101vd_coco_o365"),
         _rtdetr("PekingU/rtdetr_r18vd_coco_o365"), APACHE, "RT-DETR on COCO (Objects365 pre-training)."),
    Pair("rtdetr-r50vd-to-r18vd", "detection", _rtdetr("PekingU/rtdetr_r50vd_coco_o365"),
         _rtdetr("PekingU/rtdetr_r18vd_coco_o365"), APACHE, "RT-DETR on COCO (Objects365 pre-training)."),
    Pair("segformer-b5-to-b0-ade", "segmentation", _segformer("nvidia/segformer-b5-finetuned-ade-640-640"),
         _segformer("nvidia/segformer-b0-finetuned-ade-512-512"), SEGFORMER_LICENCE, "SegFormer on ADE20K."),
    Pair("segformer-b5-to-b0-cityscapes", "segmentation",
         _segformer("nvidia/segformer-b5-finetuned-cityscapes-1024-1024"),
         _segformer("nvidia/segformer-b0-finetuned-cityscapes-1024-1024"), SEGFORMER_LICENCE,
         "SegFormer on Cityscapes."),
    Pair("shapes-clip", "classification", ModelSource("builtin", "shapes_clip_teacher", model_class="open_clip",
                                                      architecture="shapes-clip-teacher"),
         ModelSource("builtin", "shapes_clip_student", model_class="open_clip", architecture="shapes-clip-student"),
         BUILTIN_LICENCE,
         "Builtin tiny CLIPs on Shapes captions (open_clip configs); the student is distilled from the teacher."),
    Pair("clip-vit-l14-to-b32", "classification", CLIP_TEACHER,
         _open_clip("timm/vit_base_patch32_clip_224.openai", "ViT-B-32-quickgelu", "openai"), OPENAI_CLIP_LICENCE,
         "OpenAI CLIP ViT-L/14 teacher, ViT-B/32 student (open_clip)."),
    Pair("clip-vit-l14-to-b16", "classification", CLIP_TEACHER,
         _open_clip("timm/vit_base_patch16_clip_224.openai", "ViT-B-16-quickgelu", "openai"), OPENAI_CLIP_LICENCE,
         "OpenAI CLIP ViT-L/14 teacher, ViT-B/16 student (open_clip)."),
    Pair("clip-vit-l14-to-mobileclip-s1", "classification", CLIP_TEACHER,
         _open_clip("apple/MobileCLIP-S1-OpenCLIP", "MobileCLIP-S1", "datacompdr"),
         f"teacher: {OPENAI_CLIP_LICENCE}; student: {MOBILECLIP_LICENCE}",
         "OpenAI CLIP ViT-L/14 teacher, MobileCLIP-S1 student (open_clip)."),
    Pair("shapes-diffusion", "generation",
         ModelSource("builtin", "shapes_diffusion", model_class="StableDiffusionPipeline"),
         ModelSource("builtin", "shapes_diffusion", model_class="UNet2DConditionModel",
                     subfolder="unet_student"), BUILTIN_LICENCE,
         "Builtin tiny latent text-to-image teacher and its block-removed student UNet (shared VAE and text encoder).",
         native={"width": 64, "height": 64, "steps": 25, "guidance": 4.0}),
    Pair("sd15-to-bk-sdm-small", "generation", SD15, _unet("nota-ai/bk-sdm-small"), SD_LICENCE,
         "Stable Diffusion 1.5 and BK-SDM-Small's block-removed UNet (sharing SD 1.5's VAE and text encoder).",
         native={"width": 512, "height": 512, "steps": 25, "guidance": 7.5}),
    Pair("sd15-to-lcm-lora", "generation", SD15,
         ModelSource("hub", "latent-consistency/lcm-lora-sdv1-5", model_class="UNet2DConditionModel", revision="main",
                     lora="pytorch_lora_weights.safetensors", scheduler="LCMScheduler"),
         SD_LICENCE, "Stable Diffusion 1.5 and the same UNet with LCM-LoRA (4 steps, LCM scheduler).",
         native={"width": 512, "height": 512, "steps": 25, "guidance": 7.5, "student_steps": 4,
                 "student_guidance": 1.0}),
)


_REGISTRY: dict[str, Pair] = {pair.name: pair for pair in _BUILTIN_AND_HUB_PAIRS}


class UnknownPairError(ValueError):
    """A pair name that the registry does not hold (or that belongs to another task)."""


def register_pair(pair: Pair) -> Pair:
    """Add a pair (e.g. a test's tiny models, or a user's own); names are unique."""
    if pair.name in _REGISTRY:
        raise ValueError(f"a pair named {pair.name!r} is already registered")
    _REGISTRY[pair.name] = pair
    return pair


def unregister_pair(name: str) -> None:
    _REGISTRY.pop(name, None)


def list_pairs(task: str | None = None) -> list[Pair]:
    return [p for p in _REGISTRY.values() if task is None or p.task == task]


def get_pair(name: str, task: str | None = None) -> Pair:
    """Find a pair by name; raises :class:`UnknownPairError` naming the valid choices."""
    pair = _REGISTRY.get(name) if isinstance(name, str) else None
    if pair is not None and (task is None or pair.task == task):
        return pair
    choices = ", ".join(p.name for p in list_pairs(task))
    shown = (name[:60] + "…") if isinstance(name, str) and len(name) > 60 else name
    kind = f"{task} pair" if task else "pair"
    raise UnknownPairError(f"Unknown {kind} {shown!r}. Choose one of: {choices}.")
