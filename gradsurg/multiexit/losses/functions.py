"""Loss *functions*: plain math on tensors, no registry, no state.

RomeBERT's task loss and self-distillation (SD): SD trains every exit but the last on a mix
of the labels and the final exit's softened predictions. The teacher is detached, so L_sd
sends no gradient to the final exit at all; the final exit learns from its own task loss,
added by the caller. Registered terms (`losses.terms`) and loss groups
(`gradsurg.loss_groups`) are built from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gradsurg.errors import ConfigError

__all__ = [
    "check_gamma",
    "check_temperature",
    "distillation_kl",
    "exit_cross_entropy",
    "exit_distillation_loss",
    "exit_mse",
    "self_distillation_loss",
    "task_loss",
]


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[-1] < 1:
        raise ConfigError(
            f"logits shape {tuple(logits.shape)} is invalid; allowed: [B, num_labels]"
        )


def exit_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of class logits [B, C] against integer labels [B]."""
    return F.cross_entropy(logits, labels.long().reshape(-1))


def exit_mse(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error of a regression exit [B, 1] against float targets [B]."""
    return F.mse_loss(logits.reshape(-1), labels.to(logits.dtype).reshape(-1))


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Task loss of one exit: MSE when ``num_labels == 1`` (regression), else cross-entropy."""
    _check_logits(logits)
    if logits.shape[-1] == 1:
        return exit_mse(logits, labels)
    return exit_cross_entropy(logits, labels)


def distillation_kl(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """T² · KL(p_teacher^T ‖ p_student^T), batch-mean; the teacher is detached.

    The T² factor keeps the gradient scale independent of T (Hinton et al.).
    """
    check_temperature(temperature)
    log_q = F.log_softmax(student / temperature, dim=-1)
    log_p = F.log_softmax(teacher.detach() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


def self_distillation_loss(
    exit_logits: Sequence[Tensor],
    labels: Tensor,
    *,
    gamma: float = 0.9,
    temperature: float = 3.0,
) -> Tensor:
    """RomeBERT L_sd = Σ_{i<k} [(1-γ)·task_i + γ·distill(i ← k)], k = final exit.

    Classification: distill = T²·KL(p_k^T ‖ p_i^T). Regression (``num_labels == 1``):
    task = MSE(y_i, labels), distill = MSE(y_i, y_k) (no temperature). The final exit is
    the teacher and is detached.
    """
    check_gamma(gamma)
    check_temperature(temperature)
    logits = list(exit_logits)
    if len(logits) < 2:
        raise ConfigError(
            f"self-distillation got {len(logits)} exit(s); allowed: at least 2 (students + teacher)"
        )
    for item in logits:
        _check_logits(item)
        if item.shape != logits[-1].shape:
            raise ConfigError(
                f"exit logits shapes differ ({tuple(item.shape)} vs {tuple(logits[-1].shape)}); "
                "allowed: one shape [B, num_labels] for every exit"
            )
    teacher = logits[-1]
    total = torch.zeros((), dtype=teacher.dtype, device=teacher.device)
    for student in logits[:-1]:
        total = total + exit_distillation_loss(student, teacher, labels, gamma=gamma,
                                               temperature=temperature)
    return total


def exit_distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, *, gamma: float,
                           temperature: float) -> Tensor:
    """One student exit's share of L_sd: (1-γ)·task + γ·distill(student ← teacher).

    Classification: distill = T²·KL(p_teacher^T ‖ p_student^T); regression: MSE to the
    teacher's output. The teacher is detached.
    """
    teacher = teacher.detach()
    if teacher.shape[-1] == 1:
        distill = F.mse_loss(student, teacher)
    else:
        distill = distillation_kl(student, teacher, temperature=temperature)
    return (1.0 - gamma) * task_loss(student, labels) + gamma * distill


def check_gamma(gamma: float) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"gamma={gamma!r} is invalid; allowed: a number in [0, 1]")


def check_temperature(temperature: float) -> None:
    ok = (
        not isinstance(temperature, bool)
        and isinstance(temperature, int | float)
        and math.isfinite(temperature)
        and temperature > 0
    )
    if not ok:
        raise ConfigError(f"temperature={temperature!r} is invalid; allowed: a finite number > 0")
