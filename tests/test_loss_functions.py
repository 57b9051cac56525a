"""RomeBERT loss terms checked against a plain-Python reference implementation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.functions import (
    distillation_kl,
    exit_cross_entropy,
    self_distillation_loss,
    task_loss,
)

# -- independent reference: lists of floats, math only ----------------------------------


def ref_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def ref_ce(logits: list[list[float]], labels: list[int]) -> float:
    return sum(-math.log(ref_softmax(row)[y]) for row, y in zip(logits, labels, strict=True)) / len(
        labels
    )


def ref_kl(teacher: list[list[float]], student: list[list[float]], temperature: float) -> float:
    """Batch mean of KL(p_teacher^T || p_student^T), times T^2."""
    total = 0.0
    for t_row, s_row in zip(teacher, student, strict=True):
        p = ref_softmax(t_row, temperature)
        q = ref_softmax(s_row, temperature)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    return temperature**2 * total / len(teacher)


def ref_mse(pred: list[float], target: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(pred, target, strict=True)) / len(pred)


def ref_sd_classification(exits, labels, gamma, temperature) -> float:
    teacher = exits[-1]
    return sum(
        (1 - gamma) * ref_ce(student, labels) + gamma * ref_kl(teacher, student, temperature)
        for student in exits[:-1]
    )


def ref_sd_regression(exits, labels, gamma) -> float:
    teacher = [row[0] for row in exits[-1]]
    total = 0.0
    for student in exits[:-1]:
        pred = [row[0] for row in student]
        total += (1 - gamma) * ref_mse(pred, labels) + gamma * ref_mse(pred, teacher)
    return total


def as_tensors(exits: list[list[list[float]]]) -> list[torch.Tensor]:
    return [torch.tensor(e, dtype=torch.float64, requires_grad=True) for e in exits]


CLS_EXITS = [
    [[0.5, -1.0, 2.0], [1.5, 0.2, -0.3], [-2.0, 0.0, 0.7], [0.1, 0.1, 0.1]],
    [[1.0, -0.5, 0.5], [0.3, 2.2, -1.3], [-0.4, 1.1, 0.2], [2.0, -2.0, 0.0]],
    [[3.0, 0.0, -1.0], [-1.0, 1.0, 0.5], [0.0, 0.5, 2.5], [0.7, 0.6, -0.9]],
]
CLS_LABELS = [2, 0, 2, 1]
REG_EXITS = [[[0.3], [1.2], [-0.7]], [[0.9], [0.1], [-0.2]], [[1.5], [0.4], [0.0]]]
REG_LABELS = [1.0, 0.5, -1.0]


# -- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(("gamma", "temperature"), [(0.9, 3.0), (0.5, 1.0), (1.0, 2.0)])
def test_sd_classification_matches_hand_computation(gamma: float, temperature: float) -> None:
    got = self_distillation_loss(
        as_tensors(CLS_EXITS), torch.tensor(CLS_LABELS), gamma=gamma, temperature=temperature
    )
    want = ref_sd_classification(CLS_EXITS, CLS_LABELS, gamma, temperature)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("gamma", [0.9, 0.3])
def test_sd_regression_matches_hand_computation(gamma: float) -> None:
    got = self_distillation_loss(
        as_tensors(REG_EXITS), torch.tensor(REG_LABELS, dtype=torch.float64), gamma=gamma
    )
    assert got.item() == pytest.approx(ref_sd_regression(REG_EXITS, REG_LABELS, gamma), rel=1e-9)


def test_gamma_zero_is_sum_of_student_cross_entropies() -> None:
    exits = as_tensors(CLS_EXITS)
    labels = torch.tensor(CLS_LABELS)
    got = self_distillation_loss(exits, labels, gamma=0.0, temperature=5.0)
    want = sum(ref_ce(e, CLS_LABELS) for e in CLS_EXITS[:-1])
    assert got.item() == pytest.approx(want, rel=1e-9)
    torch.testing.assert_close(got, sum(exit_cross_entropy(e, labels) for e in exits[:-1]))


def test_task_loss_dispatches_on_num_labels() -> None:
    cls = task_loss(torch.tensor(CLS_EXITS[0], dtype=torch.float64), torch.tensor(CLS_LABELS))
    assert cls.item() == pytest.approx(ref_ce(CLS_EXITS[0], CLS_LABELS), rel=1e-9)
    reg = task_loss(torch.tensor(REG_EXITS[0], dtype=torch.float64), torch.tensor(REG_LABELS))
    assert reg.item() == pytest.approx(ref_mse([r[0] for r in REG_EXITS[0]], REG_LABELS), rel=1e-9)


def test_distillation_is_stable_for_extreme_logits() -> None:
    student = torch.tensor([[1000.0, -1000.0, 0.0]])
    teacher = torch.tensor([[-1000.0, 1000.0, 0.0]])
    value = distillation_kl(student, teacher, temperature=1.0)
    assert torch.isfinite(value) and value.item() > 1000


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    num_exits=st.integers(2, 4),
    batch=st.integers(1, 3),
    classes=st.integers(2, 4),
    gamma=st.floats(0.0, 1.0),
    temperature=st.floats(0.5, 4.0),
)
def test_sd_matches_reference_on_random_inputs(
    data, num_exits: int, batch: int, classes: int, gamma: float, temperature: float
) -> None:
    value = st.floats(-5.0, 5.0, allow_nan=False)
    row = st.lists(value, min_size=classes, max_size=classes)
    exits = [data.draw(st.lists(row, min_size=batch, max_size=batch)) for _ in range(num_exits)]
    labels = data.draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    got = self_distillation_loss(
        as_tensors(exits), torch.tensor(labels), gamma=gamma, temperature=temperature
    )
    want = ref_sd_classification(exits, labels, gamma, temperature)
    assert got.item() == pytest.approx(want, rel=1e-7, abs=1e-9)


# -- gradients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exits", "labels"),
    [(CLS_EXITS, torch.tensor(CLS_LABELS)), (REG_EXITS, torch.tensor(REG_LABELS))],
    ids=["classification", "regression"],
)
@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_final_exit_gets_no_gradient(exits, labels: torch.Tensor, gamma: float) -> None:
    tensors = as_tensors(exits)
    self_distillation_loss(tensors, labels, gamma=gamma).backward()
    assert tensors[-1].grad is None  # teacher detached and excluded from the CE sum
    for student in tensors[:-1]:
        assert student.grad is not None and student.grad.abs().sum() > 0


def test_teacher_shared_with_graph_still_gets_no_gradient() -> None:
    """Exits built on one shared trunk: L_sd must not push the final exit's head."""
    trunk = torch.tensor([[0.2, -0.4], [1.0, 0.3]], dtype=torch.float64, requires_grad=True)
    heads = [torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    self_distillation_loss([trunk @ h for h in heads], torch.tensor([0, 2])).backward()
    assert heads[-1].grad is None or torch.count_nonzero(heads[-1].grad) == 0
    assert heads[0].grad is not None and torch.count_nonzero(heads[0].grad) > 0


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), True])
def test_invalid_gamma(gamma: float) -> None:
    with pytest.raises(ConfigError, match="gamma"):
        self_distillation_loss(as_tensors(CLS_EXITS), torch.tensor(CLS_LABELS), gamma=gamma)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_temperature(temperature: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        self_distillation_loss(
            as_tensors(CLS_EXITS), torch.tensor(CLS_LABELS), temperature=temperature
        )


def test_invalid_exit_lists() -> None:
    labels = torch.tensor(CLS_LABELS)
    with pytest.raises(ConfigError, match="at least 2"):
        self_distillation_loss(as_tensors(CLS_EXITS[:1]), labels)
    mixed = [*as_tensors(CLS_EXITS[:2]), torch.zeros(4, 2, dtype=torch.float64)]
    with pytest.raises(ConfigError, match="shapes differ"):
        self_distillation_loss(mixed, labels)
