"""The builtin Shapes text-to-image pair in diffusers format: tiny VAE, tiny CLIP text encoder, teacher UNet and a
block-removed student UNet (BK-SDM style: one resnet/attention pair per stage, no mid block) sharing the VAE and
text encoder. Saved with ``save_pretrained`` and loaded by ``StableDiffusionPipeline.from_pretrained`` like any
Hub model.

The text encoder is a tiny ``CLIPTextModel`` kept at its (seeded) random initialisation: a fixed feature extractor
that the UNets learn to read. Its tokenizer is a real ``CLIPTokenizer`` whose BPE vocabulary is built here from
the Shapes words (plus single letters, so any text tokenizes), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weights.shapes.checkpoints import BUILTIN_DIR
from weights.shapes.world import COLOUR_NAMES, SHAPE_NAMES

DIFFUSION_DIR = BUILTIN_DIR / "shapes_diffusion"  # the teacher pipeline; the student UNet is in unet_student/
IMAGE_SIDE = 64
WORDS = ("a", "an", "and", "shape", *COLOUR_NAMES, *SHAPE_NAMES)
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
CONTEXT_LENGTH = 16


def write_tokenizer_files(folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` of a CLIP BPE that knows the Shapes words and every single letter."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,"
    tokens = list(letters) + [c + "</w>" for c in letters]
    merges: list[str] = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*tokens, *SPECIALS]))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")


def build_components(seed: int = 0) -> dict:
    """Fresh (untrained) tokenizer, text encoder, VAE, scheduler, teacher and student UNets."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                  model_max_length=CONTEXT_LENGTH)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=CONTEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
                        block_out_channels=(32, 64, 64), sample_size=IMAGE_SIDE,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    unet_kwargs = dict(sample_size=IMAGE_SIDE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                       cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16)
    teacher = UNet2DConditionModel(layers_per_block=2, **unet_kwargs)
    student = UNet2DConditionModel(layers_per_block=1, mid_block_type=None, **unet_kwargs)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler,
            "unet": teacher, "unet_student": student}


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """(B, L, 32) text-encoder hidden states, as the pipeline computes them."""
    ids = tokenizer(prompts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0]
