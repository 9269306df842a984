"""Diffusion tab: teacher and distilled student from the same seed and initial latent, at high resolution, with
our own RAU-Net and MSW-MSA (``methods.hires``)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from analysis.attention import capture_cross_attention
from analysis.features import hooked
from analysis.profiling import PeakMemory, Stopwatch
from demos.common import ROLES, Cancelled, InputError, exclusive, heat_overlay, on_gpu
from methods.hires import high_resolution
from weights.loaders import assemble_pipeline, default_device, load_generation_pair
from weights.registry import get_pair

DEFAULT_PAIR = "shapes-diffusion"
MAX_SCALE = 4  # width and height up to 4x the pair's native side
MAX_STEPS = 150
MAX_PROMPT_CHARS = 1000


def check_settings(pair, prompt: str, width, height, steps, guidance) -> tuple[str, int, int, int, float, list[str]]:
    """Validate and normalise the request; returns the settings and notes on anything changed."""
    notes: list[str] = []
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("Enter a prompt, e.g. 'a red circle'.")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        notes.append(f"The prompt was cut from {len(prompt):,} to {MAX_PROMPT_CHARS:,} characters (the text encoder "
                     "reads only its first tokens anyway).")
        prompt = prompt[:MAX_PROMPT_CHARS]
    try:
        width, height, steps, guidance = int(width), int(height), int(steps), float(guidance)
    except (TypeError, ValueError) as error:
        raise InputError("width, height and steps must be whole numbers and guidance a number.") from error
    native = max(pair.native["width"], pair.native["height"])
    limit = MAX_SCALE * native
    for name, value in (("width", width), ("height", height)):
        if not 32 <= value <= limit:
            raise InputError(f"{name} must lie in [32, {limit}] for {pair.name} (up to {MAX_SCALE}x its native "
                             f"{native} px), got {value}.")
    rounded = (8 * round(width / 8), 8 * round(height / 8))
    if rounded != (width, height):
        notes.append(f"Size rounded from {width}x{height} to {rounded[0]}x{rounded[1]} (a multiple of 8).")
        width, height = rounded
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must lie in [1, {MAX_STEPS}], got {steps}.")
    if not 0.0 <= guidance <= 30.0:
        raise InputError(f"guidance must lie in [0, 30], got {guidance}.")
    return prompt, width, height, steps, guidance, notes


# Work one request may ask of a CPU, in denoising steps times pixels: 25 steps at 256 x 256 (about a minute for the
# builtin pair on two cores); a GPU has no such cap. DISTILL_LENS_CPU_STEP_PIXELS changes it.
CPU_STEP_PIXELS = int(os.environ.get("DISTILL_LENS_CPU_STEP_PIXELS", str(25 * 256 * 256)))


def check_budget(device: torch.device, steps: int, width: int, height: int) -> None:
    """Refuse, with what to change, a CPU request whose steps x pixels exceed :data:`CPU_STEP_PIXELS`."""
    work = steps * width * height
    if device.type == "cpu" and work > CPU_STEP_PIXELS:
        most = max(1, CPU_STEP_PIXELS // (width * height))
        raise InputError(f"{steps} steps at {width}x{height} is more than this CPU server runs per request "
                         f"({CPU_STEP_PIXELS:,} step-pixels). Use at most {most} steps at this size, or a smaller "
                         f"size; a GPU server has no such limit.")


@contextmanager
def _recording(unet, hires, step: int | None) -> Iterator[dict]:
    """At denoising step ``step``, record cross-attention and every up block's output (nothing when None)."""
    if step is None:
        yield {}
        return
    active = lambda: hires.step == step  # noqa: E731
    with capture_cross_attention(unet, active) as attention, hooked(
            unet, lambda name, _m: re.fullmatch(r"up_blocks\.\d+", name) is not None,
            lambda _args, out: out.detach() if active() else None, what="up blocks") as blocks:
        yield {"attention": attention, "blocks": blocks}


def _insight(array: dict, records: dict, tokenizer, prompt: str, latent_hw: tuple[int, int]) -> dict:
    """Consensus overlays per up block and per-word cross-attention overlays for both models."""
    from analysis.attention import normalise_map, token_maps
    from analysis.consensus import affinity_consensus

    out = {"consensus": [], "attention": {}, "figures": []}
    t_blocks, s_blocks = records["teacher"]["blocks"], records["student"]["blocks"]
    for name in sorted(set(t_blocks) & set(s_blocks)):
        similarity = affinity_consensus(t_blocks[name][-1:], s_blocks[name][-1:])  # the conditional half
        out["consensus"].append((heat_overlay(array["teacher"], normalise_map(similarity)[0]),
                                 f"{name}: mean consensus {float(similarity.mean()):.3f}"))
        out["figures"].append({"block": name, "consensus_mean": round(float(similarity.mean()), 4)})
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    words = [w.replace("</w>", "") for w in tokenizer.convert_ids_to_tokens(ids)[1:-1]]
    for role in ROLES:
        store = records[role]["attention"]
        if not store:
            continue
        maps = token_maps(store, *latent_hw)[1:1 + len(words)]
        out["attention"][role] = [(heat_overlay(array[role], normalise_map(m[None])[0]), w)
                                  for m, w in zip(maps, words, strict=False)]
    return out


def with_fresh_scheduler(pipe):
    """The same pipeline (the same cached modules) with a scheduler of its own: a scheduler holds per-run state
    (its timesteps, its step index), so concurrent calls must never share one."""
    return assemble_pipeline(pipe, scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config))


@on_gpu
def generate(prompt: str, pair: str = DEFAULT_PAIR, seed: int = 0, width: int = 64, height: int = 64,
             steps: int = 25, guidance: float = 4.0, raunet: bool = False, msw_msa: bool = False,
             progress=None, insight: dict | None = None, insight_step: int | None = None,
             cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Teacher and student images for one prompt, from the same seed and initial latent.

    Args:
        prompt: the text prompt.
        pair: a generation pair.
        seed: seeds the initial latent and the MSW-MSA window shifts (runs repeat exactly).
        width, height: output size in pixels (multiples of 8, up to 4x the pair's native side).
        steps, guidance: the teacher's denoising steps and guidance (pairs with ``student_steps`` /
            ``student_guidance``, e.g. LCM-LoRA, use those for the student).
        raunet, msw_msa: apply RAU-Net and MSW-MSA (both models alike).
        progress: ``progress(fraction, desc)`` per denoising step, or None.
        insight: a dict to fill with UNet feature consensus overlays per up block and cross-attention overlays
            per prompt word, recorded at ``insight_step`` (default: the middle step) during the same runs.
        cancel: checked every denoising step; once set, the run stops with :class:`Cancelled`.

    Returns:
        ``(teacher_image, student_image, report)``, ``report = {pair, teacher: {seconds, peak_mem_mb, steps,
        guidance}, student: {...}, settings: {prompt, seed, width, height, raunet, msw_msa}, notes}``.
    """
    spec = get_pair(pair, "generation")
    prompt, width, height, steps, guidance, notes = check_settings(spec, prompt, width, height, steps, guidance)
    seed = int(seed) % 2**32
    device = default_device()
    check_budget(device, steps, width, height)
    pipelines = load_generation_pair(spec, device)
    scale = pipelines["teacher"].vae_scale_factor
    channels = pipelines["teacher"].unet.config.in_channels
    latents = torch.randn((1, channels, height // scale, width // scale),
                          generator=torch.Generator().manual_seed(seed))  # shared by teacher and student
    report = {"pair": spec.name}
    images, records = {}, {}
    for role in ROLES:
        pipe = with_fresh_scheduler(pipelines[role])
        n = int(spec.native.get("student_steps", steps)) if role == "student" else steps
        g = float(spec.native.get("student_guidance", guidance)) if role == "student" else guidance
        generator = torch.Generator().manual_seed(seed)

        with (exclusive(pipe.unet, pipe.text_encoder, pipe.vae),  # shared modules (and tokenizer), this call only
              high_resolution(pipe.unet, n, raunet=raunet, msw_msa=msw_msa, generator=generator) as hires):
            def on_step(pipeline, i, t, kwargs, role=role, n=n, hires=hires):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"Generation stopped at the {role}'s step {i + 1}/{n}.")
                if progress is not None:
                    progress((ROLES.index(role) * n + i + 1) / (2 * n), desc=f"{role}: step {i + 1}/{n}")
                return hires.callback_on_step_end(pipeline, i, t, kwargs)

            chosen = None if insight is None else min(n - 1, insight_step if insight_step is not None else n // 2)
            with (Stopwatch(device) as watch, PeakMemory(device) as peak, torch.inference_mode(),
                  _recording(pipe.unet, hires, chosen) as rec):
                out = pipe(prompt, height=height, width=width, num_inference_steps=n, guidance_scale=g,
                           latents=latents.to(device, pipe.unet.dtype), generator=generator, output_type="np",
                           callback_on_step_end=on_step)
        records[role] = rec
        images[role] = (out.images[0] * 255).round().astype(np.uint8)
        report[role] = {"seconds": round(watch.seconds, 3), "peak_mem_mb": peak.mb, "steps": n,
                        "guidance": g}
    report["settings"] = {"prompt": prompt, "seed": seed, "width": width, "height": height, "raunet": bool(raunet),
                          "msw_msa": bool(msw_msa), "device": device.type}
    report["notes"] = notes + (["Peak memory on the CPU is the whole process's peak resident set size."]
                               if device.type == "cpu" else [])
    if insight is not None:
        insight.update(_insight(images, records, pipelines["teacher"].tokenizer, prompt, latents.shape[-2:]))
        report["unet_consensus"] = insight["figures"]
    return images["teacher"], images["student"], report


def compare_techniques(prompt: str, pair: str = DEFAULT_PAIR, seed: int = 0, width: int = 64, height: int = 64,
                       steps: int = 25, guidance: float = 4.0, progress=None, cancel=None,
                       ) -> tuple[list[tuple[np.ndarray, str]], dict]:
    """Teacher and student with neither technique, then with RAU-Net and MSW-MSA, from the same seed and latent.

    Returns:
        ``(images, report)``: four (image, caption) pairs (teacher and student without, then with) and
        ``{pair, without: <generate's report>, with: <…>, speedup: {teacher, student}}`` (seconds without over
        seconds with).
    """
    runs = {}
    for key, on in (("without", False), ("with", True)):
        def part(fraction, desc="", key=key):
            if progress is not None:
                progress((fraction + (key == "with")) / 2, desc=f"{key} RAU-Net/MSW-MSA: {desc}")

        runs[key] = generate(prompt, pair, seed, width, height, steps, guidance, on, on, part, cancel=cancel)
    images = [(runs[key][i], f"{role}, {key} RAU-Net and MSW-MSA ({runs[key][2][role]['seconds']:.2f} s)")
              for key in ("without", "with") for i, role in enumerate(ROLES)]
    report = {"pair": runs["with"][2]["pair"], "without": runs["without"][2], "with": runs["with"][2],
              "speedup": {role: round(runs["without"][2][role]["seconds"] / max(runs["with"][2][role]["seconds"],
                                                                                  1e-9), 3) for role in ROLES}}
    return images, report


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
    from demos.common import notes_markdown

    rows = "\n".join(f"| {role} | {report[role]['seconds']:.2f} | {report[role].get('peak_mem_mb') or '–'} | "
                      f"{report[role]['steps']} | {report[role]['guidance']} |" for role in ROLES)
    settings = report.get("settings", {})
    techniques = [name for name, key in (("RAU-Net", "raunet"), ("MSW-MSA", "msw_msa")) if settings.get(key)]
    speed = report["teacher"]["seconds"] / max(report["student"]["seconds"], 1e-9)
    return (notes_markdown(report.get("notes", []))
            + f"**{settings.get('width')}×{settings.get('height')}**, "
            + (" and ".join(techniques) if techniques else "no high-resolution technique")
            + f" on {settings.get('device')}: the student took {speed:.2f}× less time than the teacher.\n\n"
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

    from demos.common import (
        GPU_QUEUE,
        pair_dropdown,
        session_of,
        stop_flag,
        stop_session,
        takes_request,
        user_errors,
    )

    with gr.Tab("Diffusion", id="generation"):
        gr.Markdown("The teacher and its distilled student from the same seed and initial latent. Above the native "
                    "size, RAU-Net and MSW-MSA (after HiDiffusion, our own implementation) curb duplicated objects "
                    "and save time.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(value="a red circle", label="Prompt", max_length=5000)
                pair = pair_dropdown(("generation",), DEFAULT_PAIR)
                seed = gr.Number(value=0, precision=0, label="Seed")
                with gr.Row():
                    limit = MAX_SCALE * max(get_pair(DEFAULT_PAIR).native["width"],
                                            get_pair(DEFAULT_PAIR).native["height"])
                    width = gr.Slider(32, limit, value=64, step=8, label="Width")
                    height = gr.Slider(32, limit, value=64, step=8, label="Height")
                steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
                guidance = gr.Slider(0, 30, value=4.0, step=0.5, label="Guidance")
                with gr.Row():
                    raunet = gr.Checkbox(label="RAU-Net", value=False)
                    msw_msa = gr.Checkbox(label="MSW-MSA", value=False)
                insight_step = gr.Slider(0, MAX_STEPS - 1, value=12, step=1, label="Analyse at step")
                compare = gr.Checkbox(label="Also compare with and without RAU-Net and MSW-MSA (both models, "
                                            "twice the time)", value=False)
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generation-run")
                    stop = gr.Button("Stop", elem_id="generation-stop")
                api_run = gr.Button(visible=False)
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="generation-summary")
                slider = gr.ImageSlider(label="Teacher | student", type="numpy")
                with gr.Row():
                    outputs = [gr.Image(label=role.capitalize(), interactive=False, format="png") for role in ROLES]
                consensus = gr.Gallery(label="UNet feature consensus, teacher ↔ student (per up block)", columns=4,
                                       height=220)
                attention = [gr.Gallery(label=f"{role.capitalize()}: cross-attention per word", columns=6,
                                        height=200) for role in ROLES]
                comparison_summary = gr.Markdown(elem_id="generation-comparison")
                comparison = gr.Gallery(label="Without | with RAU-Net and MSW-MSA", columns=4, height=260,
                                        visible=False)
                report = gr.JSON(label="Report", open=False)
        inputs = [prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa]

        @takes_request
        def run_for_ui(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, step, request,
                       progress=gr.Progress()):  # noqa: B008 (Gradio injects progress through this default)
            found: dict = {}
            t, s, r = generate(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, progress,
                               insight=found, insight_step=int(step),
                               cancel=stop_flag(session_of(request)))
            return (t, s, r, (t, s), summary_markdown(r), found.get("consensus", []),
                    *(found.get("attention", {}).get(role, []) for role in ROLES))

        def run_for_api(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa,
                        progress=gr.Progress()):  # noqa: B008
            return generate(prompt, pair, seed, width, height, steps, guidance, raunet, msw_msa, progress)

        running = run.click(user_errors(run_for_ui), [*inputs, insight_step],
                            [*outputs, report, slider, summary, consensus, *attention], api_visibility="private",
                            show_progress_on=[slider], **GPU_QUEUE)
        pair.change(size_limits, pair, [width, height], api_visibility="private", queue=False)

        @takes_request
        def run_comparison(wanted, prompt, pair, seed, width, height, steps, guidance, request,
                           progress=gr.Progress()):  # noqa: B008
            if not wanted:
                return gr.update(visible=False), ""
            images, result = compare_techniques(prompt, pair, seed, width, height, steps, guidance, progress,
                                                cancel=stop_flag(session_of(request)))
            return gr.update(value=images, visible=True), comparison_markdown(result)

        running.then(user_errors(run_comparison), [compare, *inputs[:7]], [comparison, comparison_summary],
                     api_visibility="private", show_progress_on=[comparison], **GPU_QUEUE)
        stop.click(takes_request(stop_session), None, None, cancels=[running], api_visibility="private")
        api_run.click(user_errors(run_for_api), inputs, [*outputs, report], api_name="generate",
                      **GPU_QUEUE)
