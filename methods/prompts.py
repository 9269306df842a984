"""Prompt learning for an open_clip text encoder: CoOp context vectors and CasPL's cascade.

A prompt is ``[SOS] ctx_1 … ctx_M <class name> . [EOS]``: the M context vectors replace the embeddings of M
placeholder words and are the only thing that trains. A cascade puts a frozen boosting prompt's vectors before
an adapting prompt's. The text encoder's own layers run unchanged (mirroring ``open_clip.CLIP.encode_text``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from methods.checks import in_range

PLACEHOLDER = "X"


def check_text_tower(model: torch.nn.Module) -> None:
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    if not all(hasattr(model, name) for name in needed):
        raise ValueError(f"{type(model).__name__} has no open_clip CLIP text tower; prompt learning needs one")


def context_tokens(tokenizer: Callable, class_names: list[str], n_context: int, suffix: str = "") -> torch.Tensor:
    """(K, L) token ids of ``X … X <class><suffix>`` with ``n_context`` placeholders right after the start token.

    CoOp ends prompts with "."; the default adds nothing, so that a context initialised from a template's words
    starts exactly where that zero-shot template is (a full stop the text encoder never saw can cost accuracy).
    """
    return tokenizer([" ".join([PLACEHOLDER] * n_context) + f" {name}{suffix}" for name in class_names])


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


# Training -----------------------------------------------------------------------------------------------------

def class_logits(model: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """CLIP logits: the model's logit scale times cosine similarity, in float32 whatever the model's precision (a
    half-precision text tower on CUDA meets float32 image features here). (B, D), (K, D) -> (B, K)."""
    return model.logit_scale.exp().float() * image_features.float() @ text_features.float().t()


def learn_context(model: torch.nn.Module, tokenizer: Callable, class_names: list[str], image_features: torch.Tensor,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], targets: torch.Tensor,
                  init: torch.Tensor, frozen_prefix: torch.Tensor | None = None, steps: int = 100, lr: float = 2e-3,
                  batch_size: int = 32, seed: int = 0, on_step: Callable[[int, float], None] | None = None,
                  ) -> torch.Tensor:
    """Optimise context vectors (and nothing else) so the student's logits minimise ``loss_fn``.

    Args:
        model: the student open_clip ``CLIP``; its weights are not changed (only the context has gradients).
        tokenizer: the model's tokenizer.
        class_names: the K classes.
        image_features: (N, D) normalised image features of the training images, computed once.
        loss_fn: ``loss_fn(logits (b, K), targets[b])`` -> scalar.
        targets: per image, a label index (CoOp, the adapting prompt) or teacher logits (the boosting prompt).
        init: (M, width) initial context.
        frozen_prefix: (P, width) context that comes first and stays fixed (CasPL's boosting prompt).
        steps, lr, batch_size, seed: optimisation settings (Adam).
        on_step: called with ``(step, loss)`` after each step; raising in it stops training.

    Returns:
        The learned (M, width) context, detached.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = targets.to(image_features.device)  # labels may come from the host; the batch index lives on the device
    context = torch.nn.Parameter(init.detach().clone().float())
    prefix = frozen_prefix.detach().float() if frozen_prefix is not None else init.new_zeros(0, init.shape[1])
    n_total = prefix.shape[0] + context.shape[0]
    tokens = context_tokens(tokenizer, class_names, n_total).to(image_features.device)
    optimiser = torch.optim.Adam([context], lr=lr)
    for step in range(1, steps + 1):
        index = torch.randint(0, image_features.shape[0], (min(batch_size, image_features.shape[0]),),
                              generator=generator).to(image_features.device)
        text = encode_with_context(model, tokens, torch.cat([prefix, context], dim=0))
        loss = loss_fn(class_logits(model, image_features[index], text), targets[index])
        (context.grad,) = torch.autograd.grad(loss, [context])  # no .grad is written into the model
        optimiser.step()
        if on_step is not None:
            on_step(step, float(loss))
    return context.detach()


# Methods as the app and the evaluation run them -------------------------------------------------------------------

METHODS = ("coop", "caspl", "cascade")  # CoOp on labels; CasPL's boosting prompt (phase 1); CasPL phases 1 and 2
METHOD_ALIASES = {"caspl-boost": "caspl"}  # the boosting prompt's name before session 6


def method_name(method: str) -> str:
    """The method's current name (``caspl-boost`` -> ``caspl``); raises ValueError for an unknown one."""
    name = METHOD_ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {str(method)[:40]!r}")
    return name


def template_words(template: str) -> str:
    """The words before ``{}`` in a zero-shot template (``"a photo of a {}."`` -> ``"a photo of a"``): context
    initialised from them starts exactly where that template's zero-shot accuracy is."""
    return template.split("{}")[0].strip() or "a"


N_CONTEXT = 4  # context vectors per prompt, as in CoOp's 4-token setting


def initial_context(model: torch.nn.Module, tokenizer: Callable, template: str, n_context: int = N_CONTEXT,
                    ) -> torch.Tensor:
    """(n_context, width) starting vectors: the template's words (``a {}`` -> ``a``), the first of them repeated in
    front up to ``n_context`` (words the text encoder knows, unlike random vectors), or the last ``n_context``."""
    words = init_context(model, tokenizer, template_words(template))
    if n_context <= words.shape[0]:
        return words[words.shape[0] - n_context:]
    return torch.cat([words[:1].expand(n_context - words.shape[0], -1), words], dim=0)


def tune(student, teacher, class_names: list[str], method: str, labelled: tuple[torch.Tensor, torch.Tensor] | None,
         unlabelled: tuple[torch.Tensor, torch.Tensor] | None, steps: int = 100, temperature: float = 1.0,
         template: str = "a {}", on_step: Callable[[str, int, float], None] | None = None,
         n_context: int = N_CONTEXT) -> dict[str, torch.Tensor]:
    """Learn prompt context for the student of a CLIP pair.

    Args:
        student, teacher: ``ClassificationPredictor`` objects of the pair.
        class_names: the K classes.
        method: ``"coop"`` (labels only), ``"caspl"`` (CasPL's boosting prompt from the teacher's logits on
            unlabelled images) or ``"cascade"`` (that boosting prompt, frozen, then an adapting prompt on labels).
        labelled: ``(pixels (N, 3, H, W) for the student, labels (N,))`` or None.
        unlabelled: ``(pixels for the student, pixels for the teacher)`` of the same images, or None.
        steps: optimisation steps per phase.
        temperature: of the distillation KL.
        template: the zero-shot template: the teacher's class texts, and the words the context starts from.
        on_step: ``on_step(phase, step, loss)``; raising in it stops training.
        n_context: context vectors per prompt (see :func:`initial_context`); one vector, the template's ``a``
            alone, left the builtin narrow-captions student's boosting prompt at a third of the gap that four close.

    Returns:
        ``{"boost": (M, width)}`` (CasPL), ``{"adapt": (M, width)}`` (CoOp) or both (the cascade).
    """
    method = method_name(method)
    steps = in_range(steps, "steps", 1, 100_000, integer=True)
    in_range(temperature, "temperature", 0.0, 1e4, open_low=True)
    n_context = in_range(n_context, "n_context", 1, 64, integer=True)
    if len(class_names) < 2 or not all(isinstance(n, str) and n.strip() for n in class_names):
        raise ValueError("class_names must be two or more non-empty names")
    model, tokenizer = student.model, student.tokenizer
    check_text_tower(model)
    init = initial_context(model, tokenizer, template, n_context)
    out: dict[str, torch.Tensor] = {}
    if method in ("caspl", "cascade"):
        if unlabelled is None:
            raise ValueError("the boosting prompt needs unlabelled images")
        s_pixels, t_pixels = unlabelled
        with torch.no_grad():
            teacher_text = teacher.text_features([template.format(n) for n in class_names])  # computed once
            teacher_logits = teacher.logits(teacher.forward({"pixel_values": t_pixels}), teacher_text)
            s_features = student.forward({"pixel_values": s_pixels}).clone()
        out["boost"] = learn_context(
            model, tokenizer, class_names, s_features, lambda s, t: distillation_loss(s, t, temperature),
            teacher_logits.clone(), init, steps=steps,
            on_step=None if on_step is None else lambda i, loss: on_step("boost", i, loss))
    if method in ("coop", "cascade"):
        if labelled is None:
            raise ValueError(f"{method} needs labelled images")
        pixels, labels = labelled
        with torch.no_grad():
            features = student.forward({"pixel_values": pixels}).clone()
        out["adapt"] = learn_context(
            model, tokenizer, class_names, features, torch.nn.functional.cross_entropy, labels, init,
            frozen_prefix=out.get("boost"), steps=steps,
            on_step=None if on_step is None else lambda i, loss: on_step("adapt", i, loss))
    return out


def prompted_text_features(student, class_names: list[str], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The student's (K, D) text features with learned context (boosting vectors first, then adapting)."""
    context = torch.cat([tensors[k].to(student.device) for k in ("boost", "adapt") if k in tensors], dim=0)
    tokens = context_tokens(student.tokenizer, class_names, context.shape[0]).to(student.device)
    with torch.no_grad():
        return encode_with_context(student.model, tokens, context).float()
