"""Distill Lens: see what a distilled student learned from its teacher, and where it still lags.

    python app.py [--host 0.0.0.0] [--port 7860]

The app is one ``gr.Blocks`` assembled from the tab modules in ``demos/``; no model loads until a tab runs.
"""

from __future__ import annotations

import argparse
import os

import gradio as gr

from compare.inputs import MAX_UPLOAD_BYTES
from demos.analysis_tab import build_analysis_tab
from demos.classification import build_classification_tab
from demos.dataset import build_dataset_tab
from demos.detection import build_detection_tab
from demos.diffusion import build_diffusion_tab
from demos.image_classification import build_image_classification_tab
from demos.pairs import build_pairs_tab
from demos.segmentation import build_segmentation_tab
from demos.training import build_training_tab
from demos.widgets import EXAMPLES_DIR

TABS = (build_detection_tab, build_segmentation_tab, build_image_classification_tab, build_classification_tab,
        build_diffusion_tab, build_analysis_tab, build_dataset_tab, build_training_tab, build_pairs_tab)
HEADER = """# Distill Lens
A teacher and its distilled student, side by side, live: where the student learned, and where it still lags."""


# Gradio cuts gallery captions to one line (ours name the stage and both layers, the point of the picture) and breaks
# table headers mid-word.
CSS = """
.caption-label, .gallery .caption { white-space: normal !important; max-width: 100% !important;
                                    overflow-wrap: anywhere; }
.prose th { word-break: normal !important; overflow-wrap: normal !important; hyphens: manual; }
/* Gradio gives each file of a list a remove button (×), even in a list the app only shows: the report's files stay */
#dataset-files .label-clear-button { display: none !important; }
@media (max-width: 600px) {  /* phone width: galleries two across (the dataset's, captioned at length, one) */
  .responsive-gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  #dataset-gallery .grid-container { grid-template-columns: minmax(0, 1fr) !important; }
  .responsive-gallery .caption-label { overflow-wrap: normal; }
}
"""


def build_app() -> gr.Blocks:
    """Assemble every tab into one app. Builds the layout only; models load on first use."""
    # Gradio's cache of served files: checked every 10 minutes, files older than an hour deleted
    with gr.Blocks(title="Distill Lens", delete_cache=(600, 3600)) as demo:
        gr.Markdown(HEADER)
        with gr.Tabs(overflow_behavior="wrap"):  # at phone width every tab keeps its name on screen
            for build_tab in TABS:
                build_tab()
    demo.queue(default_concurrency_limit=2, max_size=int(os.environ.get("DISTILL_LENS_QUEUE_SIZE", "64")))
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Distill Lens app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from demos.first_sight import warm_up
    from weights.custom import Settings

    args = parse_args(argv)
    if "SPACE_ID" not in os.environ:  # on one's own machine, own models may come from local folders
        os.environ.setdefault("DISTILL_LENS_ALLOW_LOCAL", "1")
    print(f"Distill Lens: {Settings.from_environment().describe()}", flush=True)
    demo = build_app()
    warm_up()  # each tab's default example, computed in the background: pages open with a result
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD_BYTES,
                       allowed_paths=[str(EXAMPLES_DIR)], theme=gr.themes.Soft(), css=CSS,
                       show_error=True)  # every error's message reaches the caller (ours are written for people)


if __name__ == "__main__":
    main()
