"""The dataset report's static page: plotly figures embedded (it opens offline) and the gallery of largest
disagreement."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from reports.aggregate import MIN_IMAGES, RESAMPLES


def _png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _with_interval(value, ci) -> str:
    if value is None:
        return "undefined"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)")


NAMES = {"f1": "F1", "miou": "mIoU", "map_50": "mAP@0.5", "js": "JS divergence", "kl": "KL divergence",
         "top1": "top-1 accuracy", "top5": "top-5 accuracy", "top1_match": "top-1 match",
         "top5_overlap": "top-5 overlap", "pixel_agreement": "pixel agreement", "mean_iou": "mean IoU of matches",
         "spearman": "Spearman"}


def _words(key: str) -> str:
    """A figure's key as people write it (``miou`` -> ``mIoU``)."""
    return NAMES.get(key, key.replace("_", " "))


def figures_table(summary: dict, students: list[str]) -> str:
    """The report's first table: per model, the agreement figures, consensus and accuracy, each with its interval."""
    rows = []
    first = summary["per_student"][students[0]]
    keys = list(first["agreement"])
    accuracy = summary.get("accuracy") or {}
    acc_keys = sorted({k for block in accuracy.values() for k in block
                       if not k.endswith("ci95") and k not in ("note", "score_threshold")})
    calibration = summary.get("calibration") or {}
    head = ["model", *(f"{_words(k)}, against the teacher" for k in keys), "consensus (mean)",
            *(f"{_words(k)}, against the labels" for k in acc_keys), *(["ECE"] if calibration else [])]
    for model in ["teacher", *students]:
        block = summary["per_student"].get(model)
        cells = [model]
        cells += [_with_interval(block["agreement"][k]["mean"], block["agreement"][k]["ci95"]) if block else "–"
                  for k in keys]
        consensus = (block or {}).get("consensus", {}).get("mean") if block else None
        cells.append(_with_interval(consensus["mean"], consensus["ci95"]) if consensus else "–")
        own = accuracy.get(model, {})
        for k in acc_keys:
            ci = own.get(f"{k}_ci95", own.get("ci95") if k in ("miou", "map_50") else None)
            cells.append(_with_interval(own.get(k), ci) if k in own else "–")
        if calibration:
            block = calibration.get(model, {})
            cells.append(_with_interval(block.get("ece"), block.get("ece_ci95")))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    thresholds = {block.get("score_threshold") for block in accuracy.values()} - {None}
    caption = (f"<p>mAP@0.5 counts every box scoring {min(thresholds):g} or more.</p>" if thresholds else "")
    # why a figure against the labels is undefined, once per distinct reason, naming the models it holds for
    reasons: dict[str, list[str]] = {}
    for model in ["teacher", *students]:
        if accuracy.get(model, {}).get("note"):
            reasons.setdefault(accuracy[model]["note"], []).append(model)
    caption += "".join(f"<p>Against the labels, {html.escape(', '.join(models))}: {html.escape(note)}.</p>"
                       for note, models in reasons.items())
    return f"<h2>Figures</h2><table>{header}{''.join(rows)}</table>{caption}"


def labels_paragraph(summary: dict) -> str:
    """What the label file covered: its notes (unlisted images, classes left out, labels that did not fit)."""
    block = summary.get("labels")
    if not block:
        return ""
    items = [f"{block['images_labelled']} images measured against the labels."] + block["notes"]
    items += [f"{u['image']}: {u['reason']}" for u in block["unusable"][:20]]
    return "<h2>Labels</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def errors_table(summary: dict) -> str:
    """Inherited and corrected errors against the labels: per student, overall then per class."""
    from reports.aggregate import OUTCOMES

    errors = summary.get("inherited_errors")
    if not errors:
        return ""
    unit = {"detection": "labelled objects", "segmentation": "labelled objects"}.get(summary["task"],
                                                                                     "labelled images")
    head = "<tr><th>student</th><th>class</th><th>" + "</th><th>".join(["total", *OUTCOMES]) + "</th></tr>"
    rows = []
    for student, block in errors.items():
        for name, tally in [("all", block["overall"]), *block["per_class"].items()]:
            cells = [student, name, str(tally["total"])] + ["–" if tally[o] is None else str(tally[o])
                                                            for o in OUTCOMES]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<p>{html.escape(student)}: {html.escape(block['overall']['note'])}.</p>"
                    for student, block in errors.items() if block["overall"].get("note"))
    alike = ("both miss the object; –: cannot happen (an object is found or missed, not wrong in two ways)"
             if summary["task"] in ("detection", "segmentation") else "both give the same wrong class")
    return (f"<h2>Inherited and corrected errors ({unit})</h2><p><i>fixed</i>: the teacher wrong, the student "
            f"right; <i>lost</i>: the teacher right, the student wrong; <i>inherited</i>: {alike}.</p>"
            f"<table>{head}{''.join(rows)}</table>{notes}")


def cka_section(summary: dict) -> str:
    """Dataset CKA, teacher stage × student stage, each value beside its chance level."""
    blocks = summary.get("dataset_cka") or {}
    parts = []
    for student, block in blocks.items():
        if not block.get("matrix"):
            parts.append(f"<p>{html.escape(student)}: {html.escape(block.get('note', 'undefined'))}</p>")
            continue
        head = "<tr><th>teacher \\ student</th>" + "".join(f"<th>{html.escape(n)}</th>"
                                                           for n in block["student_layers"]) + "</tr>"
        rows = []
        for name, values, chance in zip(block["teacher_layers"], block["matrix"], block["baseline"], strict=True):
            cells = "".join(f"<td>{'undefined' if v is None else f'{v:.3f}'} "
                            f"<small>(other images: {'–' if c is None else f'{c:+.3f}'})</small></td>"
                            for v, c in zip(values, chance, strict=True))
            rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
        batches = block["batches"]
        warning = (" With so few images per batch the chance level rests on few pairs of images and moves a lot; "
                   "unbiased estimates can even leave [−1, 1].") if block["images"] / batches < 16 else ""
        parts.append(f"<h3>{html.escape(student)}</h3><table>{head}{''.join(rows)}</table><p>{block['images']} images "
                     f"in {batches} batch{'es' if batches != 1 else ''} (images of a last batch under four are left "
                     f"out).{warning}</p>")
    if not parts:
        return ""
    what = ("each tower's image embedding, one vector per image" if summary.get("task") == "classification"
            else "each stage pooled to 8×8 per image")
    return ("<h2>Representations across the dataset: CKA</h2><p>Linear CKA over the images ("
            f"{what}; minibatch CKA with the unbiased HSIC estimator, Nguyen et al. 2021): 1 is the same "
            "representation up to rotation and scale, 0 unrelated. Beside each value, the same figure against the "
            "student's features of <i>other</i> images of the batch: the level that means nothing.</p>"
            + "".join(parts))


def embedding_figure(records: list[dict], students: list[str]):
    """Each model's image embeddings projected to 2-D (PCA, numpy's SVD), coloured by disagreement with the teacher
    (a student's panel by its own, the teacher's by the first student's); hover names the image. One panel per model:
    their feature spaces differ. The colour scale is shared, so one colour means one disagreement in every panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ok = [r for r in records if "error" not in r and "embedding" in r.get("teacher", {})]
    if len(ok) < 3:
        return None
    models = ["teacher", *students]
    fig = make_subplots(1, len(models), subplot_titles=[
        f"{m}'s embeddings (PCA)" + (f", coloured by {students[0]}'s disagreement" if m == "teacher" else "")
        for m in models])
    colours = {m: [r["students"][m if m != "teacher" else students[0]]["disagreement"] for r in ok] for m in models}
    defined = [v for values in colours.values() for v in values if v is not None]
    scale = {"cmin": min(defined), "cmax": max(defined)} if defined else {}
    for k, model in enumerate(models, 1):
        colour = colours[model]
        x = np.array([(r["teacher"] if model == "teacher" else r["students"][model])["embedding"] for r in ok])
        x = x - x.mean(0)
        u, sv, _ = np.linalg.svd(x, full_matrices=False)
        xy = u[:, :2] * sv[:2]
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", text=[r["image"] for r in ok],
                                 marker={"color": colour, "colorscale": "Viridis", "showscale": k == 1, **scale,
                                         "colorbar": {"title": {"text": "disagreement"}}},
                                 hovertemplate="%{text}<br>disagreement %{marker.color:.3f}<extra></extra>",
                                 showlegend=False), 1, k)
    fig.update_layout(title="Where disagreement lies in each model's image space (deepest stage, averaged over "
                            "locations)", height=420)
    return fig


def per_class_bars(summary: dict, students: list[str]) -> list:
    """One plotly bar trace per student: its agreement with the teacher per class, with the class's 95 % bootstrap
    interval (images resampled) as an error bar where it is defined (none for a class on too few images)."""
    import plotly.graph_objects as go

    traces = []
    for name in students:
        block = summary["per_student"][name]
        classes = list(block["per_class"])
        values = [block["per_class"][c] for c in classes]
        cis = [(block.get("per_class_ci95") or {}).get(c) for c in classes]
        traces.append(go.Bar(x=classes, y=values, name=name, error_y={
            "type": "data", "symmetric": False, "visible": any(cis),
            "array": [ci[1] - v if ci else 0.0 for v, ci in zip(values, cis, strict=True)],
            "arrayminus": [v - ci[0] if ci else 0.0 for v, ci in zip(values, cis, strict=True)]}))
    return traces


def ranking_paragraph(summary: dict) -> str:
    top = (summary.get("ranking") or {}).get("top_two")
    if not top:
        return ""
    return f"<p><b>Ranking of the students</b> (by {html.escape(summary['ranking']['by'])}): " \
           f"{html.escape(top['verdict'])}.</p>"


def write_report(path: Path, summary: dict, records: list[dict], timings: list[dict],
                 gallery: list[tuple[dict, list[tuple[str, np.ndarray]]]], spec, students: list[str]) -> None:
    """A self-contained HTML page: distributions, per-class bars and the gallery of largest disagreement."""
    import plotly.graph_objects as go

    ok = [r for r in records if "error" not in r]
    figures = []
    fig = go.Figure([go.Histogram(x=[r["students"][n]["disagreement"] for r in ok], name=n, opacity=0.7, nbinsx=20)
                     for n in students])
    fig.update_layout(title="Disagreement with the teacher per image (detection 1 − F1, segmentation 1 − mIoU, "
                            "classification JS)", barmode="overlay", xaxis_title="disagreement",
                      yaxis_title="images", height=360)
    figures.append(fig)
    fig = go.Figure(per_class_bars(summary, students))
    fig.update_layout(title="Per-class agreement with the teacher (95 % intervals)", barmode="group",
                      yaxis={"range": [0, 1]}, height=360)
    figures.append(fig)
    if timings:
        fig = go.Figure([go.Box(y=[t["teacher_ms"] for t in timings], name="teacher")]
                        + [go.Box(y=[t["students_ms"][n] for t in timings if n in t["students_ms"]], name=n)
                           for n in students])
        fig.update_layout(title="Latency per image (ms; this run's, not part of the results)", height=360)
        figures.append(fig)
    plots = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    cards = []
    for item, pictures in gallery:
        cells = "".join(f'<figure><img src="{_png(a)}" width="256"><figcaption>{html.escape(label)}</figcaption>'
                        "</figure>" for label, a in pictures)
        cards.append(f"<section><h3>{html.escape(item['image'])} — disagreement {item['disagreement']:.3f}</h3>"
                     f'<div class="row">{cells}</div></section>')
    unreadable = "".join(f"<li>{html.escape(u['image'])}: {html.escape(u['reason'])}</li>"
                         for u in summary["unreadable"])
    embeddings = embedding_figure(records, students)
    if embeddings is not None:
        figures.append(embeddings)
    calibration = summary.get("calibration")
    if calibration:
        fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                                    name="perfectly calibrated")]
                        + [go.Scatter(x=[b["confidence"] for b in block["bins"]],
                                      y=[b["accuracy"] for b in block["bins"]], mode="lines+markers",
                                      name=f"{model} (ECE {block['ece']:.3f})" if block["ece"] is not None else model,
                                      text=[f"{b['count']} images" for b in block["bins"]])
                           for model, block in calibration.items()])
        fig.update_layout(title="Reliability: accuracy against top-1 confidence (10 bins)",
                          xaxis_title="mean top-1 confidence in the bin", yaxis_title="accuracy against the labels",
                          height=380, xaxis={"range": [0, 1]}, yaxis={"range": [0, 1]})
        figures.insert(0, fig)
    plots = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures)]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Distill Lens dataset report: {
        html.escape(spec.name)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
.row{{display:flex;gap:8px;flex-wrap:wrap}}figure{{margin:0}}figcaption{{text-align:center}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>Dataset report: {html.escape(spec.name)}</h1>
<p>{summary['images']} images; students {html.escape(', '.join(students))}; the teacher is the reference. Means over
images with their 95 % bootstrap interval ({RESAMPLES} resamples of the images; none from under {MIN_IMAGES}
images, where it would only spread the few values: "no interval").</p>
{figures_table(summary, students)}
{labels_paragraph(summary)}
{ranking_paragraph(summary)}
{errors_table(summary)}
{cka_section(summary)}
{''.join(plots)}
<h2>Largest disagreement ({html.escape(students[0])})</h2>{''.join(cards)}
{'<h2>Unreadable files</h2><ul>' + unreadable + '</ul>' if unreadable else ''}
<details><summary>The summary as JSON (summary.json)</summary><pre>{
        html.escape(json.dumps({k: v for k, v in summary.items() if k != 'largest_disagreement'}, indent=1,
                               sort_keys=True))
    }</pre></details>
</body></html>"""
    path.write_text(page)
