"""Glue shared by the tabs: reading user images safely, friendly errors, drawing, and ZeroGPU support."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from weights.loaders import ModelUnavailableError
from weights.prompt_store import PromptError
from weights.registry import UnknownPairError, UnknownStudentError

log = logging.getLogger("distill_lens")

MAX_UPLOAD_BYTES = 50 * 2**20  # also passed to launch(max_file_size=...)
MAX_INPUT_PIXELS = 100_000_000  # refuse to decode anything larger (decompression bombs)
MAX_WORKING_SIDE = 2048  # larger images are downscaled, with a note
MIN_SIDE = 8
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS


UNREADABLE = ("Could not read the file as an image (it may be corrupt or not an image). "
              "Please upload a PNG, JPEG, WebP, BMP or TIFF image.")


class InputError(ValueError):
    """Bad input from a user; the message is shown to them as it is."""


def gpu_concurrency() -> int:
    """How many model-running events may run at once: ``DISTILL_LENS_GPU_CONCURRENCY``, else 1 on a GPU (one queue
    in front of it) and 2 on a CPU."""
    value = os.environ.get("DISTILL_LENS_GPU_CONCURRENCY")
    return max(1, int(value)) if value else (1 if torch.cuda.is_available() else 2)


# Every event that runs a model waits in this one queue, whether it came from the page or from the API.
GPU_QUEUE = {"concurrency_id": "gpu", "concurrency_limit": gpu_concurrency()}

_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


@contextmanager
def exclusive(*models: torch.nn.Module) -> Iterator[None]:
    """Hold the models for this call alone while it changes them (swapped modules, processors, hooks).

    Locks are taken in one global order, so two calls that need the same models can never deadlock; a call
    holding a model may take it again (re-entrant).
    """
    unique = sorted({id(m): m for m in models if m is not None}.values(), key=id)
    with _MODEL_LOCKS_GUARD:
        locks = [_MODEL_LOCKS.setdefault(m, threading.RLock()) for m in unique]
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


class Cancelled(InputError):
    """The user pressed Stop; the message says where the run stopped and that nothing was kept."""


# Errors whose message is meant for the user.
USER_ERRORS = (InputError, UnknownPairError, UnknownStudentError, ModelUnavailableError, PromptError)

_STOP_FLAGS: dict[str, threading.Event] = {}  # browser session -> the flag its running job checks every step
_STOP_GUARD = threading.Lock()


def stop_flag(session: str | None) -> threading.Event:
    """A fresh flag for a new job of this browser session (a Stop sets it; the job checks it every step)."""
    flag = threading.Event()
    if session:
        with _STOP_GUARD:
            _STOP_FLAGS[session] = flag
            while len(_STOP_FLAGS) > 10_000:
                _STOP_FLAGS.pop(next(iter(_STOP_FLAGS)))
    return flag


def request_stop(session: str | None) -> None:
    """Stop this session's running job at its next step (its Stop button calls this)."""
    with _STOP_GUARD:
        flag = _STOP_FLAGS.get(session or "")
    if flag is not None:
        flag.set()


def takes_request(fn: Callable) -> Callable:
    """Mark ``fn``'s ``request`` parameter as a ``gr.Request``, so Gradio passes the caller's request. (Our modules
    use postponed annotations and import gradio lazily, so a written ``gr.Request`` annotation would stay a string
    that Gradio cannot resolve.)"""
    import gradio as gr

    fn.__annotations__["request"] = gr.Request
    return fn


def session_of(request) -> str | None:
    return getattr(request, "session_hash", None)


def stop_session(request) -> None:
    """A Stop button's handler (wrap it in :func:`takes_request`): the session's running job stops at its next
    step."""
    request_stop(session_of(request))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit and float greyscale are rescaled, alpha is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("RGB")


def read_image(value: str | Path | np.ndarray | Image.Image | None) -> tuple[np.ndarray, list[str]]:
    """Read a user's image into RGB uint8 (H, W, 3), with notes on anything changed.

    Args:
        value: a file path, a numpy array or a PIL image.

    Returns:
        ``(image, notes)``. Images with a side over ``MAX_WORKING_SIDE`` are downscaled (a note says so).

    Raises:
        InputError: no image, an unreadable or non-image file, too many pixels, or a side under ``MIN_SIDE``.
    """
    if value is None:
        raise InputError("No image given: upload one, use the webcam, or pick an example.")
    notes: list[str] = []
    reduction = 1.0  # a large JPEG is decoded at 1/2, 1/4 or 1/8 of its stored size
    try:
        if isinstance(value, (str, Path)):
            path = Path(value)
            if path.stat().st_size > MAX_UPLOAD_BYTES:
                raise InputError(f"The file is larger than {MAX_UPLOAD_BYTES // 2**20} MB.")
            with warnings.catch_warnings():  # the size is checked just below, with a message that names it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise InputError(f"The image is {image.width:,}×{image.height:,} pixels, more than "
                                 f"{MAX_INPUT_PIXELS:,}; please downscale it.")
            stored_width = image.width
            if image.format == "JPEG" and max(image.size) > 2 * MAX_WORKING_SIDE:
                image.draft("RGB", (MAX_WORKING_SIDE, MAX_WORKING_SIDE))  # decode a large JPEG at 1/2, 1/4 or 1/8
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
            reduction = stored_width / image.width
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        else:
            image = value
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            notes.append(f"Converted from {image.mode} to RGB.")
        image = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"The image has more than {MAX_INPUT_PIXELS:,} pixels; please downscale it.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(UNREADABLE) from error
    width, height = image.size
    stored = (round(width * reduction), round(height * reduction))
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The image is {width}×{height} pixels; each side needs at least {MIN_SIDE} pixels.")
    if max(width, height) > MAX_WORKING_SIDE:
        scale = MAX_WORKING_SIDE / max(width, height)
        new_size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    if stored != image.size:
        notes.append(f"Downscaled from {stored[0]}×{stored[1]} to {image.size[0]}×{image.size[1]} pixels.")
    if max(width, height) / min(width, height) > 8:
        notes.append(f"Extreme aspect ratio ({width}×{height}): objects may be too thin for the models.")
    return np.asarray(image, dtype=np.uint8).copy(), notes


OUTPUT_DIR = Path(tempfile.gettempdir()) / "distill_lens_outputs"
MAX_OUTPUT_FILES = 2000  # the oldest files beyond this many are deleted
_written = itertools.count()


def output_path(prefix: str, suffix: str) -> Path:
    """A fresh, never user-given path for one output file (or, made by the caller, a folder such as a dataset run's),
    in a folder kept to ``MAX_OUTPUT_FILES`` entries: the oldest files and folders beyond that are deleted."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    if next(_written) % 100 == 0:
        def age(entry: Path) -> float:
            try:
                newest = entry.stat().st_mtime
                if entry.is_dir():  # as old as its newest file, so a dataset run still writing is kept
                    newest = max([newest] + [f.stat().st_mtime for f in entry.rglob("*")])
                return newest
            except OSError:  # removed meanwhile by another call
                return 0.0

        files = sorted(OUTPUT_DIR.iterdir(), key=age)
        for old in files[: max(0, len(files) - MAX_OUTPUT_FILES)]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return OUTPUT_DIR / f"{prefix}-{uuid.uuid4().hex[:16]}{suffix}"


def served_files(value: object) -> object:
    """Every RGB(A) uint8 image in an event's result, written to a PNG file of its own (name unique per call, written
    under a temporary name and renamed), so that two calls with identical images never share, rewrite or serve a
    half-written file; galleries' (image, caption) pairs keep their captions. Anything else is returned as it is."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[2] in (3, 4):
        path = output_path("image", ".png")
        partial = path.with_suffix(".partial")
        Image.fromarray(value).save(partial, format="PNG")
        os.replace(partial, path)
        return str(path)
    if isinstance(value, tuple):
        return tuple(served_files(v) for v in value)
    if isinstance(value, list):
        return [served_files(v) for v in value]
    return value


def user_errors(fn: Callable) -> Callable:
    """Turn our user-facing errors into ``gr.Error`` (which reaches gradio_client callers too)
    and any other failure into a short message, so the app keeps serving. Images in the result are served from
    files of their own (:func:`served_files`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return served_files(fn(*args, **kwargs))
        except gr.Error:
            raise
        except USER_ERRORS as error:
            raise gr.Error(str(error), print_exception=False) from error
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise gr.Error("The GPU ran out of memory; try a smaller image or a builtin pair.") from error
        except Exception as error:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(error).__name__}). The app is still running; "
                           f"please try another input.") from error

    return wrapper


def on_gpu(fn: Callable) -> Callable:
    """Run under ``spaces.GPU`` when the ``spaces`` package is present (a ZeroGPU Space); unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def display_scale(height: int, width: int, target: int = 512) -> float:
    """Small images are drawn enlarged so that boxes and labels stay legible."""
    return max(1.0, target / max(height, width))


@functools.cache
def font_path() -> str | None:
    """A TrueType font for box labels when the system has DejaVu Sans; None falls back to PIL's default."""
    from PIL import ImageFont

    try:
        ImageFont.truetype("DejaVuSans.ttf", 12)
        return "DejaVuSans.ttf"
    except OSError:
        return None


def enlarge(image: np.ndarray, scale: float) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) uint8 tensor, enlarged by ``scale`` with nearest neighbours."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if scale == 1.0:
        return tensor
    size = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    return torch.nn.functional.interpolate(tensor[None].float(), size=size, mode="nearest")[0].to(torch.uint8)


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated colours (golden-ratio hues); index 0 is grey for background."""
    import colorsys

    colours = [(90, 90, 90)]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


ROLES = ("teacher", "student")


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def annotation_layer(region: np.ndarray | tuple, shape: tuple[int, int], colour: tuple[int, int, int],
                     ) -> np.ndarray:
    """One annotation of an annotated image as an (H, W, 4) uint8 layer in ``colour``: a mask ((H, W), nonzero
    where it covers) in that colour, or a box ``(x0, y0, x1, y1)`` drawn as a solid outline over a light tint."""
    h, w = shape
    layer = np.zeros((h, w, 4), np.uint8)
    layer[..., :3] = colour
    if isinstance(region, np.ndarray):
        layer[..., 3] = np.where(region > 0, 255, 0)  # opaque: a tint would mix with the object's own colour
        return layer
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return layer
    border = max(2, round(min(h, w) / 200))
    layer[y0:y1, x0:x1, 3] = 40
    for rows, cols in ((slice(y0, y0 + border), slice(x0, x1)), (slice(y1 - border, y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + border)), (slice(y0, y1), slice(x1 - border, x1))):
        layer[rows, cols, 3] = 255
    return layer


def run_sides(predictors: dict, image: np.ndarray, post: Callable) -> dict[str, tuple[object, dict]]:
    """Run the teacher and each chosen student on one image with the same code path.

    Args:
        predictors: ``{"teacher": Predictor, <student name>: Predictor, ...}`` (see ``predictors_for``).
        image: RGB uint8 (H, W, 3).
        post: ``post(predictor, outputs, geometry)`` -> the side's result.

    Returns:
        ``{name: (result, {"latency_ms", "params", "gflops"})}`` in the order given; latency is the median of a few
        warm forwards, with its interquartile range (``latency_iqr_ms``) and the number of timed runs.
    """
    from analysis.profiling import time_call

    sides = {}
    for name, predictor in predictors.items():
        inputs, geometry = predictor.prepare(image)
        outputs, timing = time_call(lambda p=predictor, x=inputs: p.forward(x), predictor.device)
        profile = timing.as_dict() | {"params": predictor.params, "gflops": predictor.gflops(inputs)}
        sides[name] = (post(predictor, outputs, geometry), profile)
    return sides


def students_report(chosen: list, per_student: dict[str, dict], key: str, higher_is_better: bool = True) -> dict:
    """The several-students part of a tab's report.

    Args:
        chosen: the chosen ``Student`` objects, in order.
        per_student: ``{name: {..., "agreement": {...}}}`` as the tab computed them.
        key: the agreement figure the ranking sorts by (e.g. ``"miou"``).
        higher_is_better: the figure's direction.

    Returns:
        ``{"students": {name: {method, source, ...per_student[name]}}, "ranking": [{rank, name, <key>,
        latency_ms, params, gflops}], "student": <the first student's block>, "agreement": <its agreement>}``
        (``student`` and ``agreement`` are the single-student fields, kept for one release).
    """
    students = {s.name: {"method": s.method, "source": s.source.display_name, **per_student[s.name]} for s in chosen}

    def score(name: str) -> float:
        value = students[name]["agreement"].get(key)
        return float("-inf") if value is None else (value if higher_is_better else -value)

    ranked = sorted(students, key=score, reverse=True)
    ranking = [{"rank": i + 1, "name": n, key: students[n]["agreement"].get(key),
                **{k: students[n].get(k) for k in ("latency_ms", "params", "gflops")}} for i, n in enumerate(ranked)]
    first = students[chosen[0].name]
    return {"students": students, "ranking": ranking, "ranked_by": key,
            "student": {k: v for k, v in first.items() if k != "agreement"}, "agreement": first["agreement"]}


def ranking_markdown(report: dict) -> str:
    """The tabs' compact table: teacher first, then the chosen students best first."""
    key = report.get("ranked_by", "")

    def number(value, spec: str, scale: float = 1.0, unit: str = "") -> str:
        return "–" if value is None else f"{value / scale:{spec}}{unit}"

    def latency(block: dict) -> str:
        spread = block.get("latency_iqr_ms")
        runs = block.get("runs")
        return number(block.get("latency_ms"), ".1f") + (f" ± {spread / 2:.1f} ({runs} runs)" if spread is not None
                                                          and runs else "")

    def row(label: str, figure: str, block: dict) -> str:
        return (f"| {label} | {figure} | {latency(block)} | "
                f"{number(block.get('params'), '.2f', 1e6, ' M')} | {number(block.get('gflops'), '.2f')} |")

    rows = [row("teacher", "–", report["teacher"])]
    rows += [row(f"{r['rank']}. {r['name']}", number(r[key], ".3f"), report["students"][r["name"]])
             for r in report.get("ranking", [])]
    direction = "↓" if key == "kl" else "↑"
    return (f"| model | {key.replace('_', ' ')} vs teacher {direction} | ms (median ± ½ IQR) | params "
            "| GFLOPs |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))


def student_picker(task: str, pair: str):
    """The "Students" menu: up to two students of the pair, empty meaning its first; refreshed when the pair changes
    (:func:`wire_student_picker`). Its default stays empty so that API callers who leave ``students`` out get the
    first student of whichever pair they name. Other names reach our own clear error."""
    import gradio as gr

    from weights.registry import MAX_STUDENTS_AT_ONCE, get_pair

    students = get_pair(pair, task).students
    return gr.Dropdown([s.name for s in students], value=[], multiselect=True, max_choices=MAX_STUDENTS_AT_ONCE,
                       allow_custom_value=True, label="Students (one or two; empty: the first)",
                       info=_methods_line(students))


def _methods_line(students) -> str:
    return " · ".join(f"{s.name}: {s.method}" for s in students)


def wire_student_picker(pair, picker) -> None:
    import gradio as gr

    from weights.registry import UnknownPairError, get_pair

    def refresh(name: str):
        try:
            students = get_pair(name).students
        except UnknownPairError:
            return gr.update()
        return gr.update(choices=[s.name for s in students], value=[], info=_methods_line(students))

    pair.change(refresh, pair, picker, api_visibility="private", queue=False)


EXAMPLES_LABEL = ("Examples: Shapes scenes first (the builtin pairs know only the Shapes world: five shapes on "
                  "a noisy background); the photos are for Hub pairs")


def examples_for(task: str) -> list[str]:
    """Example image paths for a tab: Shapes scenes (single objects for classification), then real photos."""
    pattern = "single_*.png" if task == "classification" else "shapes_*.png"
    return [str(p) for glob in (pattern, "photo_*.jpg") for p in sorted(EXAMPLES_DIR.glob(glob))]


def examples(task: str, image) -> None:
    """The tab's examples, placed right under its image input (above the fold), with an honest label."""
    import gradio as gr

    gr.Examples(examples_for(task), inputs=[image], label=EXAMPLES_LABEL, elem_id=f"{task}-examples",
                examples_per_page=8)


def pair_choice(pair) -> tuple[str, str]:
    """A pair menu entry: ``(label, name)``, the label saying builtin, or Hub and whether it is already cached."""
    from weights.loaders import weights_at_hand

    if pair.source == "builtin":
        where = "builtin"
    else:
        sources = [pair.teacher, *(s.source for s in pair.students)]
        where = "Hub, cached" if all(weights_at_hand(s) for s in sources) else "Hub, downloads on first use"
    return f"{pair.name} · {where}", pair.name


def pair_dropdown(tasks: tuple[str, ...], value: str):
    """The "Pair" menu of a tab: every registered pair of these tasks, marked builtin or Hub (cached or not); other
    names reach our own clear error."""
    import gradio as gr

    from weights.registry import list_pairs

    choices = [pair_choice(p) for p in list_pairs() if p.task in tasks]
    return gr.Dropdown(choices, value=value, label="Pair", allow_custom_value=True)


def api_result_images(task: str) -> list:
    """The teacher's and the first student's drawn results, hidden: the tab shows :func:`annotated_views`, and these
    stay its API's image outputs (what ``/detect`` and ``/segment`` return to scripts)."""
    import gradio as gr

    return [gr.Image(label=role.capitalize(), interactive=False, format="png", elem_id=f"{task}-{role}",
                     visible=False) for role in ROLES]


def annotated_views(task: str) -> list:
    """The teacher's, the first student's and (hidden until chosen) the second student's boxes or masks, each with
    a legend whose entries highlight their regions."""
    from demos.components import annotated_result

    return [annotated_result("Teacher", f"{task}-teacher-view"), annotated_result("Student", f"{task}-student-view"),
            annotated_result("Second student", f"{task}-second-student-view", visible=False)]


def annotated_views_update(image, report: dict | None, value_of: Callable[[np.ndarray, int | None], tuple | None],
                           ) -> tuple:
    """Updates of :func:`annotated_views` after a run: ``value_of(array, None)`` for the teacher, ``value_of(array,
    i)`` for the i-th chosen student, ``array`` the run's image read once for all panels; each panel is named after
    its student. A panel that cannot be drawn is left empty (the run's result is on screen already)."""
    from demos.components import annotated_update

    names = list((report or {}).get("students", {}))
    try:
        array = read_image(image)[0] if report else None
    except InputError:  # the image was cleared or replaced by an unreadable one after the run
        array = None

    def value(position):
        if array is None:
            return None
        try:
            return value_of(array, position)
        except Exception:
            log.exception("drawing an annotated view failed")
            return None

    return (annotated_update(value(None)),
            annotated_update(value(0), label=f"Student: {names[0]}" if names else None),
            annotated_update(value(1), label=f"Student: {names[1]}" if len(names) > 1 else None,
                             visible=len(names) > 1))


def notes_markdown(notes: list[str]) -> str:
    return "".join(f"> **Note:** {note}\n\n" for note in notes)


@functools.cache
def _heat_lut() -> torch.Tensor:
    """256 colours of plotly's Turbo scale, (256, 3) uint8."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    colours = sample_colorscale("Turbo", [i / 255 for i in range(256)])
    return torch.tensor([unlabel_rgb(c) for c in colours], dtype=torch.float32).round().to(torch.uint8)


@functools.cache
def _heat_lut_on(device: torch.device) -> torch.Tensor:
    """The Turbo colours as (256, 3) float32 on ``device``, uploaded once per device."""
    return _heat_lut().float().to(device)


def upload_image(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 numpy -> the same tensor on ``device``; to CUDA through pinned memory, without waiting."""
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def heat_overlays(canvas: torch.Tensor, heats: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """Blend maps over an image as Turbo heat maps, on the tensors' device.

    Args:
        canvas: (H, W, 3) uint8 image.
        heats: (N, h, w) maps in [0, 1] (resized to (H, W) when their size differs).
        alpha: the heat map's weight.

    Returns:
        (N, H, W, 3) uint8 overlays.
    """
    size = tuple(canvas.shape[:2])
    if tuple(heats.shape[-2:]) != size:
        heats = torch.nn.functional.interpolate(heats[:, None].float(), size=size, mode="bilinear",
                                                align_corners=False)[:, 0]
    heats = torch.nan_to_num(heats.float(), nan=0.0).clamp(0, 1)  # a NaN (fp16 overflow) must not index the LUT
    colours = _heat_lut_on(canvas.device)[(heats * 255).round().long()]  # (N, H, W, 3)
    return ((1 - alpha) * canvas.float() + alpha * colours).round().to(torch.uint8)


def heat_overlay(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.55, low: str = "low", high: str = "high",
                 ) -> np.ndarray:
    """Blend an (h, w) map in [0, 1] (any grid, any device) over the image as a Turbo heat map, with its colour
    bar underneath."""
    canvas = enlarge(image, display_scale(*image.shape[:2])).permute(1, 2, 0)
    return with_colour_bar(heat_overlays(canvas, heat.detach().float().cpu()[None], alpha)[0].numpy(), low, high)


@functools.lru_cache(maxsize=64)
def _colour_bar(width: int, low: str, high: str) -> np.ndarray:
    """A (28, width, 3) strip: the Turbo scale from 0 to 1, then its two end labels (drawn once per width and
    labels: text rendering costs about a millisecond, as much as the rest of a GPU analysis; read-only)."""
    from PIL import ImageDraw, ImageFont

    lut = _heat_lut().numpy()
    ramp = lut[np.linspace(0, 255, width).round().astype(int)]
    strip = Image.new("RGB", (width, 28), (255, 255, 255))
    strip.paste(Image.fromarray(np.repeat(ramp[None], 12, axis=0)), (0, 0))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.truetype(font_path(), 11) if font_path() else ImageFont.load_default()
    for short_low, short_high in ((low, high), ("low", "high"), ("−", "+")):  # the longest labels that fit
        if draw.textlength(short_low, font=font) + draw.textlength(short_high, font=font) + 24 <= width:
            low, high = short_low, short_high
            break
    draw.text((2, 13), low, fill=(40, 40, 40), font=font)
    right = draw.textlength(high, font=font)
    draw.text((max(2, width - right - 2), 13), high, fill=(40, 40, 40), font=font)
    bar = np.array(strip)
    bar.flags.writeable = False
    return bar


def with_colour_bar(overlay: np.ndarray, low: str = "low", high: str = "high") -> np.ndarray:
    """The overlay with its colour bar (the Turbo scale, ``low`` to ``high``) appended underneath."""
    return np.concatenate([overlay, _colour_bar(overlay.shape[1], low, high)], axis=0)
