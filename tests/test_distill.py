"""Known answers for the distillation losses of methods/distill.py."""

import torch

from methods.distill import clip_kd, feature_kd, heatmap_kd, soft_label_kd


def test_soft_label_kd_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4, 4)
    assert soft_label_kd(logits, logits).abs() < 1e-6
    assert soft_label_kd(torch.randn(2, 6, 4, 4), logits) > 0.01
    flat = torch.randn(3, 5)  # (B, K) logits: averaged over the batch only
    assert torch.allclose(soft_label_kd(flat, flat * 0, temperature=1.0),
                          torch.nn.functional.kl_div(flat.log_softmax(1), torch.full((3, 5), 0.2),
                                                     reduction="batchmean"))


def test_feature_kd_ignores_the_scale_of_each_map():
    torch.manual_seed(0)
    maps = [torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)]
    assert feature_kd([m * 5 + 2 for m in maps], maps) < 1e-4  # layer norm over each map's spatial extent
    assert feature_kd([torch.randn_like(m) for m in maps], maps) > 0.5


def test_heatmap_kd_is_smallest_for_the_teachers_own_outputs():
    torch.manual_seed(0)
    teacher = {"heatmap": torch.randn(1, 5, 8, 8) * 3, "size": torch.randn(1, 2, 8, 8),
               "offset": torch.rand(1, 2, 8, 8)}
    other = {k: v + torch.randn_like(v) for k, v in teacher.items()}
    assert heatmap_kd(teacher, teacher) < heatmap_kd(other, teacher)


def test_clip_kd_is_zero_for_the_teacher_itself():
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    out = (image, text, torch.tensor(10.0))
    assert clip_kd(out, out).abs() < 1e-6
    assert clip_kd((image, text.roll(1, 0), torch.tensor(10.0)), out) > 0.01


def test_adm_losses_weight_agreement_for_the_student_and_disagreement_for_the_teacher():
    from methods.distill import adm_feature_losses

    torch.manual_seed(0)
    teacher = torch.randn(2, 16, 8, 8, requires_grad=True)
    assert all(loss.abs() < 1e-6 for loss in adm_feature_losses(teacher * 1.0, teacher))  # the same features
    student = (teacher.detach() + 0.05 * torch.randn(2, 16, 8, 8)).requires_grad_(True)
    with torch.no_grad():
        student[:, :, :3, :3] = torch.randn(2, 16, 3, 3)  # a region where the student disagrees
    student_loss, teacher_loss = adm_feature_losses(student, teacher, tau=0.05)
    # gradients reach only their own side
    (g_student,) = torch.autograd.grad(student_loss, student, retain_graph=True)
    assert torch.autograd.grad(student_loss, teacher, allow_unused=True)[0] is None
    (g_teacher,) = torch.autograd.grad(teacher_loss, teacher)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[:3, :3] = True
    # the teacher's (divergence) loss pulls hardest inside the disagreeing region, the student's (consensus) outside
    teacher_pull = g_teacher.norm(dim=1).mean(0)
    student_pull = g_student.norm(dim=1).mean(0)
    assert teacher_pull[region].mean() > 3 * teacher_pull[~region].mean()
    assert student_pull[~region].mean() > student_pull[region].mean()
