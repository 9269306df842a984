"""Diffusion comparison: teacher and student images from the same prompt, seed and initial latent, with our RAU-Net
and MSW-MSA (``methods.hires``) switchable, per-step progress and a stop checked every step; UNet feature consensus
and cross-attention maps recorded during the same runs."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from analysis.attention import capture_cross_attention
from analysis.features import hooked
from analysis.profiling import PeakMemory, Stopwatch
from compare.checks import number
from compare.drawing import heat_overlay
from compare.inputs import InputError
from compare.jobs import Cancelled, exclusive, stop_check
from methods.hires import VARIANTS, high_resolution
from weights.loaders import assemble_pipeline, default_device, load_generation_pair
from weights.registry import get_pair

ROLES = ("teacher", "student")  # the two sides of a generation pair
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
    native = max(pair.native["width"], pair.native["height"])
    limit = MAX_SCALE * native
    try:
        width, height = (number(v, f"{name} (up to {MAX_SCALE}x {pair.name}'s native {native} px)", 32, limit,
                                integer=True) for name, v in (("width", width), ("height", height)))
    except InputError as error:
        raise InputError(str(error)) from None
    steps = number(steps, "steps", 1, MAX_STEPS, integer=True)
    guidance = number(guidance, "guidance", 0.0, 30.0)
    rounded = (8 * round(width / 8), 8 * round(height / 8))
    if rounded != (width, height):
        notes.append(f"Size rounded from {width}x{height} to {rounded[0]}x{rounded[1]} (a multiple of 8).")
        width, height = rounded
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
        mean = float(similarity.nanmean()) if bool(similarity.isfinite().any()) else None  # None: undefined
        out["consensus"].append((heat_overlay(array["teacher"], normalise_map(similarity.nan_to_num(0.0))[0]),
                                 f"{name}: mean consensus " + ("undefined (constant features)" if mean is None
                                                               else f"{mean:.3f}")))
        out["figures"].append({"block": name, "consensus_mean": None if mean is None else round(mean, 4)})
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


def prompt_notes(tokenizer, prompt: str) -> list[str]:
    """What the text encoder will not read as typed, said on the page: the words past its context (the tokenizer cuts
    them without a word) and words it does not know, which it reads letter by letter."""
    notes = []
    ids = tokenizer(prompt, truncation=False).input_ids
    limit = tokenizer.model_max_length
    if len(ids) > limit:
        kept = tokenizer.decode(ids[1:limit - 1]).strip()
        cut = prompt[len(kept):].strip() if prompt.lower().startswith(kept.lower()) else tokenizer.decode(
            ids[limit - 1:-1]).strip()
        notes.append(f"The text encoder reads {limit} tokens (start and end included); the prompt is {len(ids)}, so "
                     f"it reads only '{kept}' and ignores: '{cut[:200]}'. Put what matters first, or shorten it.")
    unknown = [w for w in dict.fromkeys(prompt.split())
               if len(pieces := tokenizer.tokenize(w)) > 2 and all(len(p.replace("</w>", "")) <= 1 for p in pieces)]
    if unknown:
        notes.append(f"The text encoder does not know {', '.join(repr(w) for w in unknown[:8])}: it reads "
                     f"{'them' if len(unknown) > 1 else 'it'} letter by letter.")
    return notes


def with_fresh_scheduler(pipe):
    """The same pipeline (the same cached modules) with a scheduler of its own: a scheduler holds per-run state
    (its timesteps, its step index), so concurrent calls must never share one."""
    return assemble_pipeline(pipe, scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config))


def generate(prompt: str, pair: str = DEFAULT_PAIR, seed: int = 0, width: int = 64, height: int = 64,
             steps: int = 25, guidance: float = 4.0, raunet: bool = False, msw_msa: bool = False,
             progress=None, insight: dict | None = None, insight_step: int | None = None,
             cancel: threading.Event | Callable[[], bool] | None = None, variant: str = "paper",
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Teacher and student images for one prompt, from the same seed and initial latent.

    Args:
        prompt: the text prompt.
        pair: a generation pair.
        seed: seeds the initial latent and the MSW-MSA window shifts (runs repeat exactly).
        width, height: output size in pixels (multiples of 8, up to 4x the pair's native side).
        steps, guidance: the teacher's denoising steps and guidance (pairs with ``student_steps`` /
            ``student_guidance``, e.g. LCM-LoRA, use those for the student).
        raunet, msw_msa: apply RAU-Net and MSW-MSA (both models alike).
        variant: ``"paper"`` (HiDiffusion's official algorithm, its 4x schedule included) or ``"fast"`` (ours: the
            mirror upsampler convolves at half size; see :mod:`methods.hires`).
        progress: ``progress(fraction, desc)`` per denoising step, or None.
        insight: a dict to fill with UNet feature consensus overlays per up block and cross-attention overlays
            per prompt word, recorded at ``insight_step`` (default: the middle step) during the same runs.
        cancel: a flag (or callable) checked every denoising step, as is whether the caller has gone (an API cancel,
            a closed page: :func:`compare.jobs.caller_gone`); then the run stops with :class:`Cancelled`.

    Returns:
        ``(teacher_image, student_image, report)``, ``report = {pair, teacher: {seconds, peak_mem_mb, steps,
        guidance}, student: {...}, settings: {prompt, seed, width, height, raunet, msw_msa}, notes}``.
    """
    stopped = stop_check(cancel)
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)} (paper: HiDiffusion's own algorithm; fast: "
                         f"ours), got {str(variant)[:20]!r}.")
    spec = get_pair(pair, "generation")
    prompt, width, height, steps, guidance, notes = check_settings(spec, prompt, width, height, steps, guidance)
    seed = number(seed, "seed", -(2**63), 2**63 - 1, integer=True) % 2**32
    device = default_device()
    check_budget(device, steps, width, height)
    pipelines = load_generation_pair(spec, device)
    tokenizer = pipelines["teacher"].tokenizer  # shared by both pipelines and every call: used under its lock
    with exclusive(tokenizer):
        notes += prompt_notes(tokenizer, prompt)
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

        with (exclusive(pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer),  # shared: this call's alone
              high_resolution(pipe.unet, n, raunet=raunet, msw_msa=msw_msa, generator=generator,
                              variant=variant) as hires):
            def on_step(pipeline, i, t, kwargs, role=role, n=n, hires=hires):
                if stopped():
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
                          "msw_msa": bool(msw_msa), "variant": variant if raunet or msw_msa else None,
                          "device": device.type}
    report["notes"] = notes + (["Peak memory on the CPU is the whole process's peak resident set size."]
                               if device.type == "cpu" else [])
    if insight is not None:
        with exclusive(tokenizer):
            insight.update(_insight(images, records, tokenizer, prompt, latents.shape[-2:]))
        report["unet_consensus"] = insight["figures"]
    return images["teacher"], images["student"], report


def compare_techniques(prompt: str, pair: str = DEFAULT_PAIR, seed: int = 0, width: int = 64, height: int = 64,
                       steps: int = 25, guidance: float = 4.0, progress=None, cancel=None, variant: str = "paper",
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

        runs[key] = generate(prompt, pair, seed, width, height, steps, guidance, on, on, part, cancel=cancel,
                             variant=variant)
    images = [(runs[key][i], f"{role}, {key} RAU-Net and MSW-MSA ({runs[key][2][role]['seconds']:.2f} s)")
              for key in ("without", "with") for i, role in enumerate(ROLES)]
    report = {"pair": runs["with"][2]["pair"], "without": runs["without"][2], "with": runs["with"][2],
              "speedup": {role: round(runs["without"][2][role]["seconds"] / max(runs["with"][2][role]["seconds"],
                                                                                  1e-9), 3) for role in ROLES}}
    return images, report
