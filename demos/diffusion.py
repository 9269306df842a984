"""Diffusion tab: teacher and distilled student from the same seed and initial latent, at high resolution, with
our own RAU-Net and MSW-MSA (``methods.hires``)."""

from __future__ import annotations

from compare import generation
from compare.generation import DEFAULT_PAIR, MAX_SCALE, MAX_STEPS, ROLES
from demos.jobs import on_gpu
from demos.widgets import notes_markdown, report_panel
from weights.registry import get_pair

generate = on_gpu(generation.generate)
compare_techniques = on_gpu(generation.compare_techniques)


def comparison_markdown(report: dict | None) -> str:
    if not report:
        return ""
    rows = "\n".join(f"| {role} | {report['without'][role]['seconds']:.2f} | {report['with'][role]['seconds']:.2f} | "
                      f"{report['speedup'][role]:.2f}× |" for role in ROLES)
    return ("**With and without RAU-Net and MSW-MSA** (same seed and initial latent):\n\n"
            "| model | seconds without | seconds with | speed-up |\n|---|---|---|---|\n" + rows)


def summary_markdown(report: dict | None) -> str:
    """Seconds and peak memory of each model, and the student's speed-up, above the fold."""
    if not report:
        return ""
    rows = "\n".join(f"| {role} | {report[role]['seconds']:.2f} | {report[role].get('peak_mem_mb') or '–'} | "
                      f"{report[role]['steps']} | {report[role]['guidance']} |" for role in ROLES)
    settings = report.get("settings", {})
    techniques = [name for name, key in (("RAU-Net", "raunet"), ("MSW-MSA", "msw_msa")) if settings.get(key)]
    if techniques and settings.get("variant"):
        techniques[-1] += f" ({settings['variant']} variant)"
    speed = report["teacher"]["seconds"] / max(report["student"]["seconds"], 1e-9)
    return (notes_markdown(report.get("notes", []))
            + f"**{settings.get('width')}×{settings.get('height')}**, "
            + (" and ".join(techniques) if techniques else "no high-resolution technique")
            + f" on {settings.get('device')}: the student took {1 / speed:.2f}× the teacher's time ("
            + (f"{speed:.2f}× faster" if speed >= 1 else f"{1 / speed:.2f}× slower") + ").\n\n"
            "| model | seconds | peak memory (MB) | steps | guidance |\n|---|---|---|---|---|\n" + rows)


def size_limits(pair: str):
    """The width and height sliders' range for a pair: 32 to 4× its native side."""
    import gradio as gr

    try:
        spec = get_pair(pair, "generation")
    except Exception:  # an unknown name: the run reports it
        return gr.update(), gr.update()
    limit = MAX_SCALE * max(spec.native["width"], spec.native["height"])
    return (gr.update(maximum=limit, value=spec.native["width"]),
            gr.update(maximum=limit, value=spec.native["height"]))


def build_diffusion_tab() -> None:
    import gradio as gr

    from demos.components import CheckedNumber, CheckedSlider
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
    from demos.own_models import wire_own_models
    from demos.widgets import clear_on_start, cleared_values, pair_dropdown

    with gr.Tab("Diffusion", id="generation"):
        gr.Markdown("The teacher and its distilled student from the same seed and initial latent. Above the native "
                    "size, RAU-Net and MSW-MSA (after HiDiffusion, our own implementation) curb duplicated objects "
                    "and save time.\n\n"
                    "**How to read this:** the page opens on an example, computed; the consensus per up block is 1 "
                    "where the student's UNet features follow the teacher's. Change the prompt, then **Generate**.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(value="a red circle", label="Prompt", max_length=5000, elem_id="generation-prompt")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generation-run")
                    stop = gr.Button("Stop", elem_id="generation-stop")
                pair = pair_dropdown(("generation",), DEFAULT_PAIR, "generation")
                seed = CheckedNumber(value=0, precision=0, label="Seed")
                with gr.Row():
                    limit = MAX_SCALE * max(get_pair(DEFAULT_PAIR).native["width"],
                                            get_pair(DEFAULT_PAIR).native["height"])
                    width = CheckedSlider(32, limit, value=64, step=8, label="Width", elem_id="generation-width")
                    height = CheckedSlider(32, limit, value=64, step=8, label="Height",
                                           elem_id="generation-height")
                steps = CheckedSlider(1, MAX_STEPS, value=25, step=1, label="Steps", elem_id="generation-steps")
                guidance = CheckedSlider(0, 30, value=4.0, step=0.5, label="Guidance")
                with gr.Row():
                    raunet = gr.Checkbox(label="RAU-Net", value=False)
                    msw_msa = gr.Checkbox(label="MSW-MSA", value=False)
                variant = gr.Radio(["paper", "fast"], value="paper", label="Variant",
                                   info="paper: HiDiffusion's own algorithm (its 4× schedule included); fast: ours, "
                                        "the mirror upsampler at half size (fewer FLOPs, more duplicates: README)")
                insight_step = CheckedSlider(0, MAX_STEPS - 1, value=12, step=1, label="Analyse at step")
                compare = gr.Checkbox(label="Also compare with and without RAU-Net and MSW-MSA (both models, "
                                            "twice the time)", value=False)
                api_run = gr.Button(visible=False)
            with gr.Column(scale=2, elem_id="generation-results"):
                summary = gr.Markdown(elem_id="generation-summary")
                slider = gr.ImageSlider(label="Teacher | student", type="numpy", interactive=False)
                with gr.Row():
                    outputs = [gr.Image(label=role.capitalize(), interactive=False, format="png") for role in ROLES]
                consensus = gr.Gallery(label="UNet feature consensus, teacher ↔ student (per up block)", columns=4,
                                       height=300, interactive=False, elem_classes=["responsive-gallery"])
                attention = [gr.Gallery(label=f"{role.capitalize()}: cross-attention per word", columns=6,
                                        height=280, interactive=False, elem_classes=["responsive-gallery"])
                             for role in ROLES]
                comparison_summary = gr.Markdown(elem_id="generation-comparison")
                comparison = gr.Gallery(label="Without | with RAU-Net and MSW-MSA", columns=4, height=320,
                                        visible=False, interactive=False, elem_classes=["responsive-gallery"])
                report = report_panel("Report")
        inputs = [prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, variant]

        @takes_request
        def run_for_ui(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, variant, step, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            found: dict = {}
            t, s, r = generate(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, progress,
                               insight=found, insight_step=int(step),
                               cancel=stop_flag(session_of(request), "generation"), variant=variant)
            return (t, s, r, (t, s), summary_markdown(r), found.get("consensus", []),
                    *(found.get("attention", {}).get(role, []) for role in ROLES))

        def run_for_api(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, variant="paper",
                        progress=gr.Progress()):  # noqa: B008
            return generate(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, progress,
                            variant=variant)

        shown_outputs = [*outputs, report, slider, summary, consensus, *attention]

        def wire(trigger, fn, api: dict):
            started = clear_on_start(trigger, [*shown_outputs, comparison_summary])
            event = started.then(user_errors(stopped_as_outcome(fn, 8, message_at=4)), [*inputs, insight_step],
                                 shown_outputs, show_progress_on=[slider], **api, **GPU_QUEUE)
            event.failure(lambda: cleared_values(shown_outputs), None, shown_outputs, api_visibility="private")
            return event

        running = wire(run, run_for_ui, {"api_visibility": "private"})
        first_sight(wire, run_for_ui, [*inputs, insight_step], {prompt: prompt.value})
        pair.change(size_limits, pair, [width, height], api_visibility="private", queue=False)
        wire_own_models(pair, pair.own_panel)

        @takes_request
        def run_comparison(wanted, prompt, pair, seed, width, height, steps, guidance, variant, request,
                           progress=gr.Progress()):  # noqa: B008
            if not wanted:
                return gr.update(visible=False), ""
            images, result = compare_techniques(prompt, pair, seed, width, height, steps, guidance, progress,
                                                cancel=stop_flag(session_of(request), "generation"),
                                                variant=variant)
            return gr.update(value=images, visible=True), comparison_markdown(result)

        running.then(user_errors(run_comparison), [compare, *inputs[:7], variant], [comparison, comparison_summary],
                     api_visibility="private", show_progress_on=[comparison_summary], **GPU_QUEUE)
        # the run checks its stop flag every step and ends with a "Stopped at step k" notice; cancelling the event
        # as well would drop that notice (the page would keep an empty, unexplained result)
        stop.click(stop_button("generation"), None, None, api_visibility="private")
        api_run.click(user_errors(run_for_api), inputs, [*outputs, report], api_name="generate",
                      **GPU_QUEUE)
