"""Prompt learning for an open_clip text encoder: CoOp context vectors and CasPL's cascade.

A prompt is ``[SOS] ctx_1 … ctx_M <class name> . [EOS]``: the M context vectors replace the embeddings of M
placeholder words and are the only thing that trains. A cascade puts a frozen boosting prompt's vectors before
an adapting prompt's. The text encoder's own layers run unchanged (mirroring ``open_clip.CLIP.encode_text``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PLACEHOLDER = "X"


def check_text_tower(model: torch.nn.Module) -> None:
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    if not all(hasattr(model, name) for name in needed):
        raise ValueError(f"{type(model).__name__} has no open_clip CLIP text tower; prompt learning needs one")


def context_tokens(tokenizer: Callable, class_names: list[str], n_context: int) -> torch.Tensor:
    """(K, L) token ids of ``X … X <class>.`` with ``n_context`` placeholders right after the start token."""
    return tokenizer([" ".join([PLACEHOLDER] * n_context) + f" {name}." for name in class_names])


def encode_with_context(model: torch.nn.Module, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Text features of prompts whose first ``M`` word embeddings are replaced by ``context``.

    Args:
        model: an open_clip ``CLIP`` (its mode is left as it is).
        tokens: (K, L) ids from :func:`context_tokens` with ``M`` placeholders.
        context: (M, width) vectors, shared by every class.

    Returns:
        (K, embed_dim) L2-normalised text features.
    """
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast)
    m = context.shape[0]
    x = torch.cat([x[:, :1], context.to(cast).expand(x.shape[0], -1, -1), x[:, 1 + m:]], dim=1)
    x = x + model.positional_embedding.to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    pooled = projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
    return F.normalize(pooled, dim=-1)


def init_context(model: torch.nn.Module, tokenizer: Callable, words: str) -> torch.Tensor:
    """Context vectors initialised from the embeddings of ``words`` (e.g. ``"a photo of a"``), as CoOp does."""
    tokens = tokenizer([words])[0]
    n = int((tokens > 0).sum()) - 2  # without start and end tokens
    with torch.no_grad():
        return model.token_embedding(tokens[1:1 + n].to(model.token_embedding.weight.device)).float().clone()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      ) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, averaged over the batch (PromptKD / CasPL)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t
