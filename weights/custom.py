"""Your own teacher and students: a pair written as one string, and the checks made before anything downloads.

A **pair spec** names a task, a teacher and one to three students::

    detection: PekingU/rtdetr_r50vd_coco_o365 -> PekingU/rtdetr_r18vd_coco_o365, PekingU/rtdetr_r34vd
    image-classification: timm/resnet50.a1_in1k@main -> small=timm/resnet18.a1_in1k
    segmentation: /data/models/teacher -> /data/models/student

Grammar (whitespace around the separators is free)::

    spec     := task ":" teacher "->" student ("," student)*        (1 to 3 students)
    task     := detection | segmentation | image-classification | classification | generation
    teacher  := model
    student  := [name "="] model          (name: letters, digits, "-", "_", "."; default: the model's last path part)
    model    := repo_id ["@" revision] | local folder path | "hf-hub:" repo_id ["@" revision]

What a model may be, per task (each a file of ``weights/families``): detection and segmentation, a transformers
``AutoModelForObjectDetection`` / ``AutoModelForSemanticSegmentation`` class; image classification, a transformers
``AutoModelForImageClassification`` class or a timm model (``config.json`` with ``architecture``); classification
(CLIP zero-shot), an open_clip repo with ``open_clip_config.json`` and ``open_clip_model.safetensors``; generation,
an SD-1.5-layout ``StableDiffusionPipeline`` teacher and ``UNet2DConditionModel`` students (a repo with ``unet/``,
or a UNet folder).

Before any weights are read, :func:`inspect_model` checks that the repo or folder exists, that its family and class
are allowed, that it holds safetensors weights (pickled ``.bin`` files are refused), and that their total size is
under ``DISTILL_LENS_MAX_MODEL_MB`` (default 2,000 MB for one model), from the Hub's file metadata. Operators decide
with environment variables:

- ``DISTILL_LENS_ALLOW_CUSTOM=0`` turns own models off (default on);
- ``DISTILL_LENS_ALLOW_LOCAL``: local folders are refused unless it is ``1`` (folders under the working directory)
  or a list of folders separated by ``os.pathsep`` (folders under those only); ``python app.py`` sets ``1``;
- ``DISTILL_LENS_MAX_MODEL_MB``: the size limit of one model.

Nothing here registers anything: an own pair is a :class:`weights.registry.Pair` made for the call that asked, so two
users' own pairs never see each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from weights.registry import TASKS, ModelSource, Pair, Student

MAX_OWN_STUDENTS = 3
DEFAULT_MAX_MODEL_MB = 2000
SPEC_GRAMMAR = ("<task>: <teacher> -> <student>[, <student> ...] with 1 to 3 students; task one of "
                f"{', '.join(TASKS)}; a model is a Hub repo id (org/name, optionally @revision) or a local folder; "
                "a student may be named: name=<model>")
SPEC_EXAMPLE = ("detection: PekingU/rtdetr_r50vd_coco_o365 -> PekingU/rtdetr_r18vd_coco_o365, "
                "PekingU/rtdetr_r34vd")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,99}$")
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONFIG_FILES = ("config.json", "preprocessor_config.json", "open_clip_config.json", "model_index.json")
PIPELINE_PARTS = ("unet", "vae", "text_encoder")  # what a teacher pipeline loads weights for
VARIANT = re.compile(r"\.(fp16|bf16|non_ema|ema)\.")


class OwnModelError(ValueError):
    """A pair spec or an own model that cannot be used; the message says what to change."""


# Settings -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the operator allows (read from the environment at each call, so a test or an app can change it)."""

    allow_custom: bool = True
    local_roots: tuple[Path, ...] = ()  # empty: local folders refused
    max_model_mb: float = DEFAULT_MAX_MODEL_MB

    @classmethod
    def from_environment(cls) -> Settings:
        allow = os.environ.get("DISTILL_LENS_ALLOW_CUSTOM", "1").strip().lower() not in ("0", "false", "no", "off")
        local = os.environ.get("DISTILL_LENS_ALLOW_LOCAL", "0").strip()
        if local.lower() in ("", "0", "false", "no", "off"):
            roots: tuple[Path, ...] = ()
        elif local.lower() in ("1", "true", "yes", "on"):
            roots = (Path.cwd().resolve(),)
        else:
            roots = tuple(Path(p).expanduser().resolve() for p in local.split(os.pathsep) if p.strip())
        try:
            limit = float(os.environ.get("DISTILL_LENS_MAX_MODEL_MB", DEFAULT_MAX_MODEL_MB))
        except ValueError:
            limit = DEFAULT_MAX_MODEL_MB
        return cls(allow, roots, limit)

    def describe(self) -> str:
        """One line for the app's start-up message."""
        if not self.allow_custom:
            return "own models: off (DISTILL_LENS_ALLOW_CUSTOM=0)"
        local = (f"local folders allowed under {', '.join(map(str, self.local_roots))}" if self.local_roots
                 else "local folders refused (DISTILL_LENS_ALLOW_LOCAL=1 allows the working directory)")
        return f"own models: Hub repos up to {self.max_model_mb:g} MB each; {local}"


# Parsing -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """One model of a spec: a Hub repo id or a local folder, and its revision (Hub only)."""

    location: str
    revision: str | None = None
    name: str = ""

    def __str__(self) -> str:
        text = self.location + (f"@{self.revision}" if self.revision else "")
        named = self.name and self.name not in ("teacher", default_name(self.location))
        return f"{self.name}={text}" if named else text


@dataclass(frozen=True)
class PairSpec:
    task: str
    teacher: ModelRef
    students: tuple[ModelRef, ...]

    def __str__(self) -> str:
        return f"{self.task}: {self.teacher} -> {', '.join(map(str, self.students))}"


def looks_like_spec(text: Any) -> bool:
    """Whether a pair argument is a spec string rather than a registered pair's name."""
    return isinstance(text, str) and ("->" in text or re.match(r"^\s*[A-Za-z][\w-]*\s*:", text) is not None)


def is_local(location: str) -> bool:
    """A local folder path (absolute, ``./``, ``../`` or ``~``) rather than a Hub repo id."""
    return location.startswith(("/", "./", "../", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", location))


def default_name(location: str) -> str:
    """A student's default name: the last part of its repo id or folder, reduced to the name alphabet."""
    last = location.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].split("@", 1)[0] or "student"
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", last).strip("-.") or "student"
    return name[:64]


def parse_model(text: str, role: str) -> ModelRef:
    """``[name=]location[@revision]`` -> :class:`ModelRef`; raises :class:`OwnModelError` naming the part."""
    text = text.strip()
    name = ""
    if "=" in text:
        name, text = (part.strip() for part in text.split("=", 1))
        if not NAME.match(name) or name == "teacher":
            raise OwnModelError(f"The {role}'s name {name[:40]!r} is not usable: use letters, digits, '-', '_' or "
                                "'.' (at most 64 characters, not 'teacher').")
    if not text:
        raise OwnModelError(f"The {role} is empty: write a Hub repo id (org/name) or a local folder. "
                            f"Grammar: {SPEC_GRAMMAR}.")
    location, revision = text, None
    if not is_local(text):
        location = text.removeprefix("hf-hub:")
        if "@" in location:
            location, revision = location.split("@", 1)
            if not REVISION.match(revision):
                raise OwnModelError(f"The {role}'s revision {revision[:40]!r} is not a branch, tag or commit; "
                                    "write org/name@main or org/name@<commit>.")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$", location) or \
                ".." in location or location.endswith((".git", ".")):
            raise OwnModelError(f"The {role} {text[:80]!r} is neither a Hub repo id (org/name, e.g. "
                                "timm/resnet18.a1_in1k) nor a local folder path (start it with /, ./ or ~).")
    return ModelRef(location, revision, name or default_name(location))


def parse_spec(text: str) -> PairSpec:
    """A pair spec string -> :class:`PairSpec` (see the module's grammar).

    Raises:
        OwnModelError: a missing or unknown task, a missing ``->``, no student or more than three, a bad model, a
            repeated student name; each message names the part to change.
    """
    if not isinstance(text, str) or not text.strip():
        raise OwnModelError(f"The pair spec is empty. Write {SPEC_GRAMMAR}, e.g. {SPEC_EXAMPLE!r}.")
    if len(text) > 2000:
        raise OwnModelError("The pair spec is over 2,000 characters; name at most one teacher and three students.")
    head, sep, rest = text.partition(":")
    task = head.strip().lower()
    if not sep or task not in TASKS:
        shown = f"; got {head.strip()[:40]!r}" if sep and "/" not in head and "->" not in head else ""
        raise OwnModelError(f"The pair spec must start with its task and a colon, one of {', '.join(TASKS)} "
                            f"(e.g. {SPEC_EXAMPLE!r}){shown}.")
    if rest.count("->") != 1:
        raise OwnModelError("The pair spec needs exactly one '->' between the teacher and its students, e.g. "
                            f"{SPEC_EXAMPLE!r}.")
    teacher_text, students_text = rest.split("->")
    if "," in teacher_text:
        raise OwnModelError("Name one teacher before '->' (students go after it, separated by commas).")
    teacher = replace(parse_model(teacher_text, "teacher"), name="teacher")
    parts = [p for p in students_text.split(",")]
    if not any(p.strip() for p in parts):
        raise OwnModelError("Name at least one student after '->' (a Hub repo id or a local folder).")
    if any(not p.strip() for p in parts):
        raise OwnModelError("A student between commas is empty; remove the extra comma.")
    if len(parts) > MAX_OWN_STUDENTS:
        raise OwnModelError(f"At most {MAX_OWN_STUDENTS} students at once, got {len(parts)}.")
    students = tuple(parse_model(p, f"student {i + 1}") for i, p in enumerate(parts))
    names = [s.name for s in students]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OwnModelError(f"Two students are named {repeated[0]!r}; name them apart with name=<model>, e.g. "
                            f"'small={students[0].location}'.")
    return PairSpec(task, teacher, students)


# Where a model's files are ----------------------------------------------------------------------------------------
@dataclass
class Files:
    """A model's files and their sizes in bytes, from a local folder or the Hub's file metadata."""

    sizes: dict[str, int | None]
    read: Any  # read(name) -> text of a small file (config), or None when absent
    licence: str | None = None
    parameters: int | None = None
    mtimes: dict[str, int] = field(default_factory=dict)  # local folders: modification times in ns


def _check_local(location: str, settings: Settings) -> Path:
    if not settings.local_roots:
        raise OwnModelError(f"Local folders are not allowed here ({location[:80]!r}). Use a Hub repo id, or "
                            "run the app on your own machine with DISTILL_LENS_ALLOW_LOCAL=1 (python app.py sets it).")
    folder = Path(location).expanduser().resolve()
    if not any(folder == root or root in folder.parents for root in settings.local_roots):
        raise OwnModelError(f"{folder} is outside the folders allowed here "
                            f"({', '.join(map(str, settings.local_roots))}); move the model there, or name its "
                            "folder in DISTILL_LENS_ALLOW_LOCAL.")
    if not folder.is_dir():
        raise OwnModelError(f"{folder} is not a folder; give the folder you saved the model to (save_pretrained).")
    return folder


def local_files(folder: Path) -> Files:
    paths = {str(p.relative_to(folder)).replace(os.sep, "/"): p for p in sorted(folder.rglob("*"))
             if p.is_file() and ".cache" not in p.parts}
    sizes = {name: p.stat().st_size for name, p in paths.items()}
    mtimes = {name: p.stat().st_mtime_ns for name, p in paths.items()}

    def read(name: str) -> str | None:
        path = folder / name
        return path.read_text() if path.is_file() and path.stat().st_size < 5_000_000 else None

    readme = read("README.md") or ""
    found = re.search(r"^---\s*$.*?^licen[cs]e:\s*(\S.*?)\s*$.*?^---\s*$", readme, re.M | re.S)
    return Files(sizes, read, found.group(1).strip("'\"") if found else None, mtimes=mtimes)


def hub_files(ref: ModelRef, api=None) -> Files:
    """A Hub repo's files with their sizes (the repo's metadata: nothing but small config files is downloaded).

    Offline, a repo whose config is in the local Hub cache is read from there (its weights then need no download)."""
    from huggingface_hub import HfApi, constants

    from weights.hub import hub_error_message, network_failure

    api = api or HfApi()
    source = ModelSource("hub", ref.location, "?", revision=ref.revision, family="?")
    try:
        info = api.model_info(ref.location, revision=ref.revision, files_metadata=True)
    except Exception as error:
        if constants.HF_HUB_OFFLINE or network_failure(source, error):  # huggingface_hub's HTTP client raises its
            # own connection errors (httpx's, not the builtin ConnectionError)
            cached = _cached_files(ref)
            if cached is not None:
                return cached
        raise OwnModelError(hub_error_message(source, error)) from error
    sizes = {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None) or {}
    licence = card.get("license") if hasattr(card, "get") else getattr(card, "license", None)

    def read(name: str) -> str | None:
        if name not in sizes or (sizes[name] or 0) > 5_000_000:
            return None
        try:
            return Path(api.hf_hub_download(ref.location, name, revision=ref.revision)).read_text()
        except Exception as error:
            raise OwnModelError(hub_error_message(source, error)) from error

    parameters = None
    if any(n.endswith(".safetensors") for n in sizes):
        try:
            meta = api.get_safetensors_metadata(ref.location, revision=ref.revision)
            parameters = int(sum(meta.parameter_count.values()))
        except Exception:  # a pipeline (weights in subfolders) or an older Hub: counted from the weights later
            parameters = None
    return Files(sizes, read, str(licence) if licence else None, parameters)


def _cached_files(ref: ModelRef) -> Files | None:
    """The files of a repo as far as the local Hub cache knows them (offline)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> str | None:
        try:
            found = try_to_load_from_cache(ref.location, name, revision=ref.revision)
        except Exception:
            return None
        return found if isinstance(found, str) else None

    first = next((cached(n) for n in CONFIG_FILES if cached(n)), None)
    if first is None:
        return None
    snapshot = Path(first).parent
    files = local_files(snapshot)
    return Files(files.sizes, files.read, files.licence)


# Inspection ----------------------------------------------------------------------------------------------------
@dataclass
class ModelReport:
    """What :func:`inspect_model` found (``/inspect_model``'s answer): nothing has run and no weights were read.

    ``size_mb`` is the total of the safetensors files the model loads, in MB (10^6 bytes); ``parameters`` comes from
    the safetensors headers where they are readable without a download, else None; ``labels`` is the number of class
    names in the model's config (None for CLIP and diffusion models, whose classes come from the user)."""

    location: str
    revision: str | None
    where: str  # "Hub" or "local folder"
    task: str
    family: str
    model_class: str
    size_mb: float
    parameters: int | None
    licence: str | None
    labels: int | None
    label_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: ModelSource | None = None
    native: dict = field(default_factory=dict)  # generation: the pipeline's own width and height

    def to_json(self) -> dict:
        return {"location": self.location, "revision": self.revision, "where": self.where, "task": self.task,
                "family": self.family, "class": self.model_class, "size_mb": round(self.size_mb, 1),
                "parameters": self.parameters, "licence": self.licence, "labels": self.labels,
                "label_names": self.label_names[:20], "notes": self.notes}


def _json(files: Files, name: str, what: str) -> dict | None:
    text = files.read(name)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise OwnModelError(f"{what}: {name} is not valid JSON ({error}).") from error
    return value if isinstance(value, dict) else None


def _weights(files: Files, prefixes: Iterable[str], what: str, only: tuple[str, ...] = ()) -> float:
    """Total MB of the safetensors files under ``prefixes`` (one precision: variants left out when the full-precision
    file is there); refuses pickled-only weights."""
    prefixes = tuple(prefixes)

    def under(name: str) -> bool:
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        return folder in prefixes

    names = [n for n in files.sizes if under(n)]
    safetensors = [n for n in names if n.endswith(".safetensors") and (not only or n.rsplit("/", 1)[-1] in only)]
    plain = [n for n in safetensors if not VARIANT.search(n)]
    chosen = plain or safetensors
    if not chosen:
        pickled = [n for n in names if n.endswith(PICKLED)]
        where = " or ".join(p or "the top folder" for p in prefixes)
        if pickled:
            raise OwnModelError(f"{what} has only pickled weights ({', '.join(pickled[:3])}), which can run code when "
                                "read; Distill Lens reads safetensors only. Save it with safe_serialization=True, or "
                                "use a revision that has .safetensors files.")
        raise OwnModelError(f"{what} has no safetensors weights in {where}: save the model with "
                            "save_pretrained(folder, safe_serialization=True) (timm: save_for_hf(..., "
                            "safe_serialization=True)), or pick a repo revision that has .safetensors files.")
    if any(files.sizes[n] is None for n in chosen):
        raise OwnModelError(f"{what}: the Hub did not say the size of its weights, so it is not downloaded; try "
                            "again later.")
    return sum(files.sizes[n] for n in chosen) / 1e6


def _inspect_transformers(ref, files, task, what) -> tuple[ModelSource, dict]:
    config = _json(files, "config.json", what)
    if config is None or not config.get("architectures"):
        raise OwnModelError(f"{what} has no transformers config.json naming its architecture; save it with "
                            "model.save_pretrained(folder).")
    from weights.families.transformers import AUTO_CLASSES, model_classes, processor_classes

    models, processors = model_classes(task), processor_classes()
    model_class = str(config["architectures"][0])
    if model_class not in models:
        raise OwnModelError(f"{what} is a {model_class}, which is not a transformers {AUTO_CLASSES[task]} class, "
                            f"so it cannot be a {task} model here; pick a model of that kind (e.g. {models[0]}).")
    if config.get("auto_map"):
        raise OwnModelError(f"{what} asks for remote code (auto_map in its config), which Distill Lens never runs.")
    processor = _json(files, "preprocessor_config.json", what) or {}
    processor_class = processor.get("image_processor_type") or processor.get("feature_extractor_type") or ""
    processor_class = processor_class.removesuffix("Fast").replace("FeatureExtractor", "ImageProcessor")
    if processor_class not in processors:
        raise OwnModelError(f"{what}'s image processor {processor_class or '(none)'!r} is not one transformers ships; "
                            "save the processor with image_processor.save_pretrained(folder).")
    labels = [str(v) for _, v in sorted(((int(k), v) for k, v in (config.get("id2label") or {}).items()))]
    source = ModelSource("hub", ref.location, model_class, revision=ref.revision or "main",
                         processor_class=processor_class, family="transformers")
    return source, {"labels": labels, "class": model_class}


def _inspect_timm(ref, files, what) -> tuple[ModelSource, dict]:
    import timm

    config = _json(files, "config.json", what) or {}
    architecture = config.get("architecture", "")
    if not timm.is_model(architecture):
        raise OwnModelError(f"{what}: {architecture!r} is not a timm architecture this timm ({timm.__version__}) "
                            "knows.")
    pretrained = config.get("pretrained_cfg", {})
    labels = config.get("label_names") or pretrained.get("label_names")
    classes = config.get("num_classes", pretrained.get("num_classes", 1000))
    if not labels and classes == 1000:
        from weights.families.timm import imagenet_labels

        labels = list(imagenet_labels())
    location = ref.location if is_local(ref.location) else f"hf-hub:{ref.location}"
    source = ModelSource("hub", location, "timm", revision=ref.revision or "main", family="timm")
    return source, {"labels": list(labels or [f"class {i}" for i in range(classes)]), "class": f"timm {architecture}"}


def _inspect_open_clip(ref, files, what) -> tuple[ModelSource, dict]:
    config = _json(files, "open_clip_config.json", what)
    if config is None or "model_cfg" not in config:
        raise OwnModelError(f"{what} has no open_clip_config.json with a model_cfg: not an open_clip model (CLIP "
                            "zero-shot pairs take open_clip repos, e.g. timm/vit_base_patch32_clip_224.openai).")
    source = ModelSource("hub", ref.location, "open_clip", revision=ref.revision or "main", family="open_clip")
    return source, {"labels": None, "class": "open_clip CLIP"}


def _inspect_diffusers(ref, files, what, teacher: bool) -> tuple[ModelSource, dict, tuple[str, ...]]:
    index = _json(files, "model_index.json", what)
    if teacher:
        if index is None or index.get("_class_name") != "StableDiffusionPipeline":
            raise OwnModelError(f"{what} is not a StableDiffusionPipeline (model_index.json); the teacher of a "
                                "generation pair is an SD-1.5-layout pipeline.")
        unet = _json(files, "unet/config.json", what) or {}
        vae = _json(files, "vae/config.json", what) or {}
        scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
        side = int(unet.get("sample_size", 64)) * scale
        source = ModelSource("hub", ref.location, "StableDiffusionPipeline", revision=ref.revision or "main",
                             family="diffusers")
        return source, {"labels": None, "class": "StableDiffusionPipeline",
                        "native": {"width": side, "height": side, "steps": 25, "guidance": 7.5}}, PIPELINE_PARTS
    for subfolder in ("unet", ""):
        config = _json(files, f"{subfolder}/config.json" if subfolder else "config.json", what)
        if config and config.get("_class_name") == "UNet2DConditionModel":
            source = ModelSource("hub", ref.location, "UNet2DConditionModel", revision=ref.revision or "main",
                                 subfolder=subfolder, family="diffusers")
            return source, {"labels": None, "class": "UNet2DConditionModel"}, (subfolder,)
    raise OwnModelError(f"{what} holds no UNet2DConditionModel (a unet/ folder or a UNet's config.json); a student "
                        "of a generation pair is a UNet.")


def inspect_model(model: str | ModelRef, task: str, role: str = "model", api=None,
                  settings: Settings | None = None) -> ModelReport:
    """Check one own model without loading it: where it is, its family and class, size, parameters, licence, labels.

    Args:
        model: ``org/name[@revision]``, ``hf-hub:org/name``, a local folder, or a parsed :class:`ModelRef`.
        task: one of :data:`weights.registry.TASKS`; decides which families and classes are allowed.
        role: how messages name it ("teacher", "student 2").
        api: a ``huggingface_hub.HfApi`` (tests pass a fake one); default a new one.
        settings: what the operator allows; default from the environment.

    Raises:
        OwnModelError: own models off, a local folder not allowed, a repo or folder that does not exist or cannot be
            reached, a class outside the allow-list, pickled-only weights, or weights over the size limit.
    """
    settings = settings or Settings.from_environment()
    if not settings.allow_custom:
        raise OwnModelError("Own models are turned off here (DISTILL_LENS_ALLOW_CUSTOM=0); pick one of "
                            "its pairs.")
    if task not in TASKS:
        raise OwnModelError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    ref = model if isinstance(model, ModelRef) else parse_model(model, role)
    what = f"The {role} {ref.location}" + (f"@{ref.revision}" if ref.revision else "")
    if is_local(ref.location):
        folder = _check_local(ref.location, settings)
        ref = replace(ref, location=str(folder))
        files, where = local_files(folder), "local folder"
    else:
        files, where = hub_files(ref, api), "Hub"
    extra: dict
    prefixes: tuple[str, ...] = ("",)
    only: tuple[str, ...] = ()
    if task in ("detection", "segmentation"):
        source, extra = _inspect_transformers(ref, files, task, what)
    elif task == "image-classification":
        config = _json(files, "config.json", what) or {}
        if "architecture" in config and "architectures" not in config:
            source, extra = _inspect_timm(ref, files, what)
            only = ("model.safetensors",)
        else:
            source, extra = _inspect_transformers(ref, files, task, what)
    elif task == "classification":
        source, extra = _inspect_open_clip(ref, files, what)
        only = ("open_clip_model.safetensors",)
    else:
        source, extra, parts = _inspect_diffusers(ref, files, what, teacher=role == "teacher")
        prefixes = tuple(f"{p}/" if p else "" for p in parts)
    size_mb = _weights(files, prefixes, what, only)
    if size_mb > settings.max_model_mb:
        raise OwnModelError(f"{what} is {size_mb:,.0f} MB of weights, over the limit here of "
                            f"{settings.max_model_mb:,.0f} MB for one model (DISTILL_LENS_MAX_MODEL_MB); pick a "
                            "smaller model.")
    parameters = files.parameters
    if parameters is None and where == "local folder":
        parameters = _local_parameters(Path(ref.location), prefixes, only)
    notes = []
    if not files.licence:
        notes.append("no licence in the model card: check the model's terms before you use its results")
    if where == "local folder":  # a folder's weights change when its owner re-saves: a new key for the model cache
        source = replace(source, revision=_fingerprint(files, prefixes))
    labels = extra.get("labels")
    return ModelReport(ref.location, ref.revision, where, task, source.family, extra["class"], size_mb, parameters,
                       files.licence, None if labels is None else len(labels), list(labels or []), notes, source,
                       extra.get("native", {}))


def _fingerprint(files: Files, prefixes: tuple[str, ...]) -> str:
    """A local folder's weights named by their files, sizes and modification times (``local-<12 hex>``)."""
    digest = hashlib.sha256()
    for name in sorted(files.sizes):
        if name.endswith(".safetensors") and any(name.startswith(p) for p in prefixes):
            digest.update(f"{name}:{files.sizes[name]}:{files.mtimes.get(name, 0)};".encode())
    return f"local-{digest.hexdigest()[:12]}"


def _local_parameters(folder: Path, prefixes: tuple[str, ...], only: tuple[str, ...]) -> int | None:
    """Parameters of a local folder's safetensors files, from their headers (no tensor is read)."""
    from weights.loaders import safetensors_parameters

    total = 0
    for prefix in prefixes:
        for path in sorted((folder / prefix).glob("*.safetensors")):
            if VARIANT.search(path.name) or (only and path.name not in only):
                continue
            try:
                total += safetensors_parameters(path)
            except Exception:
                return None
    return total or None


# Pairs ---------------------------------------------------------------------------------------------------------
def own_pair(spec: str | PairSpec, api=None, settings: Settings | None = None) -> Pair:
    """A pair of your own models from a spec string, every model inspected first (:func:`inspect_model`).

    The pair's name is the spec itself (as reports show it); its students run all together by default (up to three).
    Label names come from each model's config; a student whose names differ from the teacher's is compared on the
    names they share (the engine lists the others).

    Raises:
        OwnModelError: a bad spec (the part named) or any model refused by :func:`inspect_model`.
    """
    return inspect_pair(spec, api, settings)[0]


def inspect_pair(spec: str | PairSpec, api=None, settings: Settings | None = None,
                 ) -> tuple[Pair, dict[str, ModelReport]]:
    """:func:`own_pair` and what the inspection found of each model (``{"teacher": ..., <student name>: ...}``)."""
    parsed = spec if isinstance(spec, PairSpec) else parse_spec(spec)
    settings = settings or Settings.from_environment()
    key = (parsed, settings)
    if api is None and key in _recent:
        return _recent[key]
    reports = {"teacher": inspect_model(parsed.teacher, parsed.task, "teacher", api, settings)}
    students = []
    for i, ref in enumerate(parsed.students):
        report = inspect_model(ref, parsed.task, f"student {i + 1} ({ref.name})", api, settings)
        reports[ref.name] = report
        students.append(Student(ref.name, report.source, f"your model: {ref.location}", licence=report.licence or
                                "unknown (no licence in the model card)"))
    teacher = reports["teacher"]
    pair = Pair(str(parsed), parsed.task, teacher.source, tuple(students),
                licence=teacher.licence or "unknown (no licence in the model card)",
                description="Your own teacher and students.", native=teacher.native, own=True)
    if api is None and not any(is_local(r.location) for r in (parsed.teacher, *parsed.students)):
        _remember(key, (pair, reports))  # Hub pairs only: a local folder is re-read each time (its owner may re-save)
    return pair, reports


# A few recent own pairs, so that a page's repeated runs do not ask the Hub again (inspections only; no models).
_recent: dict = {}
RECENT = 64


def _remember(key, value: tuple) -> None:
    _recent[key] = value
    while len(_recent) > RECENT:
        _recent.pop(next(iter(_recent)))
