"""The dataset report's static page: plotly figures embedded (it opens offline) and the gallery of largest
disagreement."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np


def _png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


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
    per_class = summary["per_student"]
    fig = go.Figure([go.Bar(x=list(per_class[n]["per_class"]), y=list(per_class[n]["per_class"].values()), name=n)
                     for n in students])
    fig.update_layout(title="Per-class agreement with the teacher", barmode="group", yaxis={"range": [0, 1]},
                      height=360)
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
    accuracy = summary.get("accuracy")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Distill Lens dataset report: {
        html.escape(spec.name)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
.row{{display:flex;gap:8px;flex-wrap:wrap}}figure{{margin:0}}figcaption{{text-align:center}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>
<h1>Dataset report: {html.escape(spec.name)}</h1>
<p>{summary['images']} images; students {html.escape(', '.join(students))}; the teacher is the reference.</p>
{'<h2>Accuracy against the labels</h2><pre>' + html.escape(json.dumps(accuracy, indent=1)) + '</pre>'
 if accuracy else ''}
<h2>Summary</h2><pre>{html.escape(json.dumps(summary['per_student'], indent=1))}</pre>
{''.join(plots)}
<h2>Largest disagreement ({html.escape(students[0])})</h2>{''.join(cards)}
{'<h2>Unreadable files</h2><ul>' + unreadable + '</ul>' if unreadable else ''}
</body></html>"""
    path.write_text(page)
