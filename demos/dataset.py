"""Dataset tab: a zip of images (and optional COCO-style labels) through a pair, as the report of
:mod:`reports.dataset` computes it."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import compare
from compare.checks import number
from compare.inputs import InputError
from demos.widgets import notes_markdown
from reports.aggregate import MIN_IMAGES
from reports.dataset import DEFAULT_CLASSES, DEFAULT_THRESHOLD, gallery_pictures, read_records, run_dataset
from reports.html import per_class_bars
from reports.inputs import MAX_ZIP_BYTES, MAX_ZIP_IMAGES, extract_zip, list_images


def dataset_report(archive, pair: str = "shapes-detection", students: str | list[str] | None = None,
                   labels=None, classes: str = DEFAULT_CLASSES, threshold: float = DEFAULT_THRESHOLD,
                   progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
                   ) -> tuple[str, object, list, list[str]]:
    """The Dataset tab's computation: a zip of images (and optionally COCO-style labels) through a pair.

    Returns:
        ``(summary_markdown, per_class_figure, gallery, files)``: ``gallery`` holds (image, caption) overlays of the
        images of largest disagreement; ``files`` are ``results.jsonl``, ``summary.json``, ``timing.json`` and
        ``report.html``. The unpacked images are deleted when the run ends (finished, stopped or failed); the
        report's folder stays among the served files, bounded with them in entries and bytes.
    """
    from compare.jobs import Cancelled
    from demos.served import output_path

    if archive is None:
        raise InputError("Upload a zip archive of images.")
    archive_path = archive if isinstance(archive, (str, Path)) else getattr(archive, "name", str(archive))
    labels_path = None if labels is None else Path(labels if isinstance(labels, (str, Path))
                                                   else getattr(labels, "name", str(labels)))
    if labels_path is not None and labels_path.stat().st_size > 20 * 2**20:
        raise InputError("The label file is larger than 20 MB.")
    threshold = number(threshold, "threshold", 0.0, 1.0)
    work = output_path("dataset", "")
    try:
        originals: dict[str, str] = {}
        notes = extract_zip(archive_path, work / "images", originals)
        images = list_images(work / "images", MAX_ZIP_IMAGES)
        out = work / "report"
        summary = run_dataset(images, pair, out, students, labels_path, threshold=threshold, classes=classes,
                              progress=progress, cancel=cancel, original_names=originals)
        if summary is None:
            done = len(read_records(out / "results.jsonl"))
            raise Cancelled(f"Stopped after {done} of {len(images)} images; nothing was summarised. Run again to "
                            "finish (the command line's --resume keeps finished images).")
        if summary["images"] == 0:
            raise InputError(f"No image in the archive could be read ({len(summary['unreadable'])} unreadable, e.g. "
                             f"{summary['unreadable'][0]['image']}: {summary['unreadable'][0]['reason']}); nothing "
                             "was measured.")
        spec, chosen, predictors = compare.load(pair, students)
        records = read_records(out / "results.jsonl")
        pictures = gallery_pictures(summary["largest_disagreement"][:6], records, images, spec, chosen, predictors,
                                    out / "gallery")
    finally:  # the unpacked images are the run's input, not its output: they go when it ends, however it ends
        shutil.rmtree(work / "images", ignore_errors=True)
        shutil.rmtree(work / "report" / "gallery", ignore_errors=True)
    by_image = {r["image"]: r for r in records}
    gallery = [(picture, gallery_caption(item, label, by_image[item["image"]], summary["students"][0]))
               for item, drawn in pictures for label, picture in drawn]
    files = [str(out / name) for name in ("report.html", "results.jsonl", "summary.json", "timing.json")]
    return summary_markdown(summary, notes), per_class_figure(summary), gallery, files


def gallery_caption(item: dict, label: str, record: dict, ranked_by: str) -> str:
    """A gallery picture's caption: a student's picture with its own disagreement, the teacher's as the reference,
    a picture of all models (a classifier's) with the disagreement the gallery is ordered by, naming whose."""
    students = record.get("students", {})
    if label in students:
        value = students[label]["disagreement"]
        return f"{item['image']} · {label}" + (f" · disagreement {value:.3f}" if value is not None else "")
    if label == "teacher":
        return f"{item['image']} · teacher (the reference)"
    return f"{item['image']} · {label} · {ranked_by}'s disagreement {item['disagreement']:.3f}"


# the figures' names for people (the span keeps Markdown from reading mAP@0.5 as an e-mail address)
FIGURE_NAMES = {"map_50": "mAP<span>@</span>0.5", "miou": "mIoU", "top1": "top-1", "top5": "top-5", "ece": "ECE"}


def figures_text(figures: dict) -> str:
    """``top1 0.812 [0.790, 0.833], top5 0.950``: each figure with its 95 % interval; an undefined figure as – with
    its note; mAP with the score threshold it counts boxes from."""
    def shown(key: str, value) -> str:
        if value is None:
            return f"– ({figures.get('note', 'undefined')})"
        ci = figures.get(f"{key}_ci95", figures.get("ci95") if key in ("map_50", "miou") else None)
        return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)")

    text = ", ".join(f"{FIGURE_NAMES.get(k, k)} {shown(k, v)}" for k, v in figures.items()
                     if k not in ("note", "score_threshold") and not k.endswith("ci95"))
    threshold = figures.get("score_threshold")
    return text + (f" (boxes scoring {threshold:g} or more)" if threshold is not None else "")


def summary_markdown(summary: dict, notes: list[str] = ()) -> str:
    lines = [f"**{summary['images']} images** through `{summary['pair']}`"
             + (f"; {len(summary['unreadable'])} unreadable (listed in summary.json)." if summary["unreadable"]
                else ".")]
    def interval(figures: dict) -> str:
        if figures.get("ci95"):
            return f" [{figures['ci95'][0]:.3f}, {figures['ci95'][1]:.3f}]"
        return f" (no interval: under {MIN_IMAGES} images)" if summary["images"] < MIN_IMAGES else ""

    for name, block in summary["per_student"].items():
        d = block["disagreement"]
        consensus = block.get("consensus", {}).get("mean", {})
        lines.append(f"**{name}**: mean disagreement with the teacher {d['mean']:.3f}{interval(d)} (median "
                     f"{d['median']:.3f}, worst {d['max']:.3f})" + (
                         f"; mean consensus {consensus['mean']:.3f}{interval(consensus)}"
                         if consensus.get("mean") is not None else "") + ".")
    top = (summary.get("ranking") or {}).get("top_two")
    if top:  # two students: whether the first is ahead beyond chance (a paired bootstrap over the images)
        lines.append(f"**Ranking** (by {summary['ranking']['by']}): {top['verdict']}.")
    if "accuracy" in summary:
        lines.append("**Against the labels:** " + "; ".join(
            f"{model} {figures_text(figures)}"
            for model, figures in summary["accuracy"].items()) + ".")
    if "misses" in summary and summary["misses"]["folder_share"] is not None:
        m = summary["misses"]
        lines.append(f"Images where {m['student']} misses a labelled object its teacher finds: "
                     f"{m['folder_share']:.0%} of the folder, {m['top_share']:.0%} of the {m['top']} images of "
                     "largest disagreement.")
    label_notes = summary.get("labels", {}).get("notes", [])  # what the label file did not cover
    return notes_markdown([*notes, *label_notes]) + "\n\n".join(lines)


def per_class_figure(summary: dict):
    import plotly.graph_objects as go

    fig = go.Figure(per_class_bars(summary, list(summary["per_student"])))
    fig.update_layout(title="Per-class agreement with the teacher", barmode="group", yaxis={"range": [0, 1]},
                      height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40},
                      # a bar chart of shares needs no zooming or selecting: a short toolbar, which at phone width
                      # stays clear of the component's label
                      modebar={"remove": ["zoom", "pan", "select", "lasso2d", "zoomIn", "zoomOut", "autoScale"]})
    return fig


EXAMPLE_SCENES = 32  # the Dataset tab's first sight: this many held-out Shapes scenes, labelled


@functools.lru_cache(maxsize=1)
def example_archive() -> tuple[Path, Path]:
    """A zip of :data:`EXAMPLE_SCENES` held-out Shapes scenes and their COCO-style labels, written once per process
    to a temporary folder: the Dataset tab's example (its first sight). Returns ``(zip, labels)``."""
    import tempfile
    import zipfile

    from weights.shapes.world import EVAL_SEED_START, write_labelled_scenes

    folder = Path(tempfile.mkdtemp(prefix="distill-lens-example-"))
    images, labels = write_labelled_scenes(folder, range(EVAL_SEED_START + 5000, EVAL_SEED_START + 5000
                                                         + EXAMPLE_SCENES))
    archive = folder / "shapes_scenes.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for image in sorted(images.iterdir()):
            zipped.write(image, image.name)
    return archive, labels


def build_dataset_tab() -> None:
    import gradio as gr

    from demos.components import CheckedSlider
    from demos.first_sight import first_sight
    from demos.jobs import (
        GPU_QUEUE,
        session_of,
        stop_button,
        stop_flag,
        stopped_as_outcome,
        takes_request,
        user_errors,
    )
    from demos.widgets import clear_on_start, cleared_values, pair_dropdown, student_picker, wire_student_picker

    with gr.Tab("Dataset", id="dataset"):
        gr.Markdown(f"A pair over a whole folder: upload a zip of images (at most {MAX_ZIP_IMAGES}, "
                    f"{MAX_ZIP_BYTES // 2**20} MB), optionally with COCO-style labels. The teacher is the reference; "
                    "the report ranks the images where the student disagrees most. Larger folders, resumable and "
                    "on several GPUs: `python -m reports.dataset` (see the README).\n\n"
                    "**How to read this:** the page opens on an example, computed (32 labelled Shapes scenes of "
                    "ours): each figure with its 95% interval over the images. Upload your zip, then **Run**.")
        with gr.Row():
            with gr.Column(scale=1):
                archive = gr.File(label="Images (.zip)", file_types=[".zip"], elem_id="dataset-archive")
                labels = gr.File(label="Labels (COCO-style .json, optional)", file_types=[".json"],
                                 elem_id="dataset-labels")
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="dataset-run")
                    stop = gr.Button("Stop", elem_id="dataset-stop")
                pair = pair_dropdown(("detection", "segmentation", "classification", "image-classification"),
                                     "shapes-detection", "dataset")
                students = student_picker("detection", "shapes-detection")
                classes = gr.Textbox(value=DEFAULT_CLASSES, label="Class names (classification pairs)")
                threshold = CheckedSlider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.05, label="Score threshold "
                                      "(detection)")
            with gr.Column(scale=2, elem_id="dataset-results"):
                summary = gr.Markdown(elem_id="dataset-summary")
                plot = gr.Plot(label="Per-class agreement (95 % CI)")
                gallery = gr.Gallery(elem_classes=["responsive-gallery"], elem_id="dataset-gallery",
                                     label="Largest disagreement (teacher and students)", columns=3, height=360,
                                     interactive=False)
                files = gr.File(label="report.html, results.jsonl, summary.json, timing.json", file_count="multiple",
                                interactive=False, elem_id="dataset-files")

        @takes_request
        def run_report(archive, pair, students, labels, classes, threshold, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            flag = stop_flag(session_of(request), "dataset")
            return dataset_report(archive, pair, students, labels, classes, threshold,
                                  progress=lambda done, total: progress(done / total, desc=f"{done}/{total} images"),
                                  cancel=flag.is_set)

        inputs, shown_outputs = [archive, pair, students, labels, classes, threshold], [summary, plot, gallery, files]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, shown_outputs)
            event = started.then(user_errors(stopped_as_outcome(fn, 4, message_at=0)), inputs, shown_outputs, **api,
                                 **GPU_QUEUE)
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        wire(run, run_report, {"api_name": "dataset"})

        @takes_request
        def run_example(archive, pair, students, labels, classes, threshold, request,
                        progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            # the example's own files, not copies served to a page (a closing page may take its copies away)
            zipped, truth = example_archive()
            return run_report(str(zipped), pair, students, str(truth), classes, threshold, request, progress)

        first_sight(wire, run_example, inputs, {}, still_valid=lambda result: all(Path(f).exists() for f in result[3]))
        stop.click(stop_button("dataset"), None, None, api_visibility="private")
        wire_student_picker(pair, students)
