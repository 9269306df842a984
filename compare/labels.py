"""Teacher and student label sets matched by name, for students whose classes differ from their teacher's (your own
models: a student fine-tuned on fewer classes, or a teacher whose config spells them differently).

Names match after case folding and with ``_``/``-`` read as spaces (``traffic_light`` = ``Traffic light``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


@dataclass(frozen=True)
class LabelMatch:
    """How one student's classes map onto its teacher's.

    ``index`` is (K_student,) int64: the teacher's class index of each student class, -1 for a student-only one;
    ``same`` says the two lists are identical (nothing to map)."""

    index: torch.Tensor
    shared: int
    teacher_only: list[str]
    student_only: list[str]
    same: bool

    def note(self, student: str) -> str | None:
        """One sentence for the report when the sets differ, else None."""
        if self.same:
            return None
        parts = [f"{student}'s classes are matched to the teacher's by name: {self.shared} shared"]
        for what, names in (("teacher only", self.teacher_only), ("student only", self.student_only)):
            if names:
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                parts.append(f"{what}: {shown}")
        return "; ".join(parts) + "."


def match_labels(teacher: list[str], student: list[str]) -> LabelMatch:
    """Match a student's class names to its teacher's (see the module)."""
    if list(teacher) == list(student):
        return LabelMatch(torch.arange(len(student)), len(student), [], [], True)
    where = {}
    for i, name in enumerate(teacher):
        where.setdefault(_key(name), i)
    index = torch.tensor([where.get(_key(name), -1) for name in student], dtype=torch.long)
    hit = set(index[index >= 0].tolist())
    return LabelMatch(index, len(hit), [n for i, n in enumerate(teacher) if i not in hit],
                      [n for n, i in zip(student, index.tolist(), strict=True) if i < 0], False)


def shared_agreement_inputs(teacher: torch.Tensor, student: torch.Tensor, match: LabelMatch,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student probabilities (both over the teacher's labels, see :func:`probabilities_on_teacher`) kept
    to the classes they share and renormalised, so that KL and JS compare like with like."""
    if match.same:
        return teacher, student
    keep = torch.zeros(teacher.shape[-1], dtype=torch.bool, device=teacher.device)
    keep[match.index[match.index >= 0].to(teacher.device)] = True
    t, s = teacher[..., keep], student[..., keep]
    return (t / t.sum(-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny),
            s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny))


def probabilities_on_teacher(probs: torch.Tensor, match: LabelMatch, classes: int) -> torch.Tensor:
    """A student's (K_student,) probabilities as (classes,) over the teacher's labels: student-only classes dropped,
    teacher-only ones 0, renormalised over what is left (all zeros when nothing is shared)."""
    if match.same:
        return probs
    out = torch.zeros(classes, dtype=probs.dtype, device=probs.device)
    keep = match.index >= 0
    out.index_add_(0, match.index[keep].to(probs.device), probs[keep.to(probs.device)])
    return out / out.sum().clamp_min(torch.finfo(out.dtype).tiny)


def map_on_teacher(class_map: torch.Tensor, match: LabelMatch, classes: int) -> torch.Tensor:
    """A student's class-index map in the teacher's indices; student-only classes become ``classes`` (one index past
    the teacher's, so they count as disagreement)."""
    if match.same:
        return class_map
    lut = torch.where(match.index >= 0, match.index, torch.full_like(match.index, classes)).to(class_map.device)
    return lut[class_map]
