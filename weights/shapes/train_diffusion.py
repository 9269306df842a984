"""Recipe that trains the builtin Shapes text-to-image pair:

    python -m weights.shapes.train_diffusion [--vae-steps 2000] [--unet-steps 3000] [--student-steps 1200] [--out DIR]
    python -m weights.shapes.train_diffusion --resume DIR --unet-steps 6000 [--out DIR]   # train DIR's teacher further

The first takes about 50 minutes on 2 CPU cores; the committed pair is the first followed by the second on
``weights/checkpoints/shapes_diffusion`` (about 70 more minutes). ``--resume`` starts from a saved pipeline
instead of fresh components: its VAE and text encoder are kept, its teacher UNet trains for another
``--unet-steps`` (a new one-cycle learning-rate schedule, i.e. a warm restart) and the student is distilled afresh
from the result. While the teacher trains, ``OUT/unet`` is overwritten every 1,000 steps, beside the VAE and text
encoder it was trained with, so that ``OUT`` always loads as a (partly trained) teacher pipeline.

1. the tiny VAE on random 32x32 crops of single-object 64x64 Shapes scenes (reconstruction + a small KL term; it
   is fully convolutional, so crops teach it the same thing at a quarter of the cost), then its colour fidelity on
   held-out scenes is printed;
2. the teacher UNet on their latents and captions (``a red circle``), epsilon prediction, 10 % empty prompts so
   classifier-free guidance works;
3. the block-removed student UNet, initialised from the teacher's matching weights and distilled the BK-SDM way:
   task loss + output distillation (MSE to the teacher's noise prediction) + feature distillation (MSE at every
   down and up block's output).
Everything is saved in diffusers format (safetensors) under ``weights/checkpoints/shapes_diffusion``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from analysis.features import hooked
from weights.shapes.diffusion import DIFFUSION_DIR, IMAGE_SIDE, build_components, encode_prompts
from weights.shapes.world import EVAL_SEED_START, TRAIN_SEEDS, render_scene


def scene_tensor(scenes: list) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1], the VAE's range, of rendered scenes."""
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1


def scene_pool(count: int) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, 64, 64) images in [-1, 1] and their captions."""
    scenes = [render_scene(TRAIN_SEEDS[i], IMAGE_SIDE, IMAGE_SIDE, single_object=True) for i in range(count)]
    return scene_tensor(scenes), [s.caption for s in scenes]


def log(tag: str, step: int, steps: int, loss: float, start: float) -> None:
    if step % 100 == 0 or step == steps:
        print(f"[{tag}] step {step}/{steps} loss {loss:.4f} {time.time() - start:.0f}s", flush=True)


def random_crops(images: torch.Tensor, batch: int, side: int, rng: torch.Generator) -> torch.Tensor:
    index = torch.randint(0, len(images), (batch,), generator=rng)
    top, left = torch.randint(0, images.shape[-1] - side + 1, (2,), generator=rng).tolist()
    return images[index, :, top:top + side, left:left + side]


def train_vae(vae, images: torch.Tensor, steps: int, rng: torch.Generator, batch: int = 32, crop: int = 32) -> None:
    optimiser = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    vae.train()
    start = time.time()
    for step in range(1, steps + 1):
        x = random_crops(images, batch, crop, rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=rng)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        log("vae", step, steps, loss.item(), start)
    vae.eval()


def vae_colour_fidelity(vae, count: int = 96) -> float:
    """Share of held-out scenes whose reconstructed object keeps its named colour (the measurement's detector)."""
    from weights.shapes.measure import objects

    scenes = [render_scene(EVAL_SEED_START + 5000 + i, IMAGE_SIDE, IMAGE_SIDE, single_object=True)
              for i in range(count)]
    with torch.no_grad():
        recon = vae.decode(vae.encode(scene_tensor(scenes)).latent_dist.mean).sample
    images = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return float(np.mean([objects(im)[1] == s.objects[0].colour for im, s in zip(images, scenes, strict=True)]))


def block_outputs(unet) -> object:
    """Hooks recording every down and up block's output (feature distillation targets)."""
    return hooked(unet, lambda name, _m: name.count(".") == 1 and name.split(".")[0] in ("down_blocks", "up_blocks"),
                  lambda _args, out: out[0] if isinstance(out, tuple) else out, what="UNet blocks")


def train_unet(unet, latents: torch.Tensor, text: torch.Tensor, empty: torch.Tensor, scheduler, steps: int,
               rng: torch.Generator, teacher=None, batch: int = 32, tag: str = "teacher",
               snapshot: Path | None = None, snapshot_every: int = 1000) -> None:
    """Train ``unet`` (the teacher, or the student distilled from ``teacher``); with ``snapshot``, save it there
    in diffusers format every ``snapshot_every`` steps so that a long run can be inspected or survives a stop."""
    optimiser = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=5e-4, total_steps=steps, pct_start=0.05)
    unet.train()
    start = time.time()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(latents), (batch,), generator=rng)
        x0 = latents[index]
        cond = torch.where(torch.rand(batch, 1, 1, generator=rng) < 0.1, empty, text[index])
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=rng)
        noisy = scheduler.add_noise(x0, noise, t)
        if teacher is None:
            loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, noise)
        else:
            with block_outputs(unet) as s_feats:
                pred = unet(noisy, t, encoder_hidden_states=cond).sample
            with torch.no_grad(), block_outputs(teacher) as t_feats:
                target = teacher(noisy, t, encoder_hidden_states=cond).sample
            feature_kd = sum(F.mse_loss(s_feats[k], t_feats[k]) for k in t_feats if k in s_feats) / len(t_feats)
            loss = F.mse_loss(pred, noise) + F.mse_loss(pred, target) + feature_kd
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        log(tag, step, steps, loss.item(), start)
        if snapshot is not None and step % snapshot_every == 0 and step < steps:
            unet.save_pretrained(snapshot, safe_serialization=True)
            print(f"[{tag}] snapshot at step {step} written to {snapshot}", flush=True)
    unet.eval()


def init_from_teacher(student, teacher) -> int:
    """Copy every teacher tensor whose name and shape the student shares (BK-SDM's initialisation)."""
    t_state = teacher.state_dict()
    shared = {k: v for k, v in student.state_dict().items() if k in t_state and t_state[k].shape == v.shape}
    student.load_state_dict({k: t_state[k] for k in shared}, strict=False)
    return len(shared)


def load_components(folder: Path) -> dict:
    """Fresh components carrying the weights of the pipeline saved in ``folder``, with a fresh student UNet (it is
    distilled again). Fresh modules keep the saved configs free of load-time fields such as ``_name_or_path``."""
    from diffusers import StableDiffusionPipeline

    saved = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    parts = build_components()
    for name in ("text_encoder", "vae", "unet"):
        parts[name].load_state_dict(getattr(saved, name).state_dict())
    parts["vae"].register_to_config(scaling_factor=saved.vae.config.scaling_factor)
    return parts


def save_teacher_pipeline(parts: dict, folder: Path) -> None:
    """The teacher pipeline (VAE, text encoder, tokenizer, teacher UNet, scheduler) in diffusers format."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"],
                                       tokenizer=parts["tokenizer"], unet=parts["unet"], scheduler=parts["scheduler"],
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8000)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--student-steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DIFFUSION_DIR, help="where the pipeline is written")
    parser.add_argument("--resume", type=Path, help="a saved pipeline whose teacher UNet trains further")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = torch.Generator().manual_seed(0)
    parts = load_components(args.resume) if args.resume else build_components()
    images, captions = scene_pool(args.scenes)
    if not args.resume:
        train_vae(parts["vae"], images, args.vae_steps, rng)
    print(f"[vae] held-out colour fidelity of reconstructions: {vae_colour_fidelity(parts['vae']):.2f}", flush=True)
    with torch.no_grad():
        latents = torch.cat([parts["vae"].encode(images[i:i + 256]).latent_dist.mean
                             for i in range(0, len(images), 256)])
    if not args.resume:
        parts["vae"].register_to_config(scaling_factor=float(1.0 / latents.std()))
    latents = latents * parts["vae"].config.scaling_factor
    text = encode_prompts(parts["tokenizer"], parts["text_encoder"], captions)
    empty = encode_prompts(parts["tokenizer"], parts["text_encoder"], [""])
    save_teacher_pipeline(parts, args.out)  # the teacher's snapshots then sit beside the VAE they were trained with
    train_unet(parts["unet"], latents, text, empty, parts["scheduler"], args.unet_steps, rng,
               snapshot=args.out / "unet")
    save_teacher_pipeline(parts, args.out)
    print(f"saved the teacher pipeline to {args.out}", flush=True)
    student = parts["unet_student"]
    print(f"[student] {init_from_teacher(student, parts['unet'])} tensors initialised from the teacher", flush=True)
    train_unet(student, latents, text, empty, parts["scheduler"], args.student_steps, rng, teacher=parts["unet"],
               tag="student")
    student.save_pretrained(args.out / "unet_student", safe_serialization=True)
    print(f"saved the student UNet to {args.out / 'unet_student'}", flush=True)


if __name__ == "__main__":
    main()
