"""The per-group gradient matrix against separate manual backward() calls."""

from __future__ import annotations

import pytest
import torch
from models import TwoHeads, batch, group_losses

from gradsurg.gradient_matrix import GradientMatrix, resolve_mode
from gradsurg.params import FlatLayout, match_patterns, trainable_parameters

BACKWARD_MODES = ["sequential", "batched"]


def manual_rows(model, x, y, names):
    """Each group's gradient by its own backward(), flattened over the named parameters."""
    rows = {}
    for group in ("a", "b"):
        model.zero_grad(set_to_none=True)
        group_losses(model, x, y)[group].backward()
        params = dict(model.named_parameters())
        rows[group] = torch.cat([
            (params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]))
            .flatten()
            for n in names
        ])
    model.zero_grad(set_to_none=True)
    return rows


def build(model, include):
    named = trainable_parameters(model)
    selected = match_patterns(named, include=include)
    chosen = {id(p) for _, p in selected}
    outside = [p for _, p in named if id(p) not in chosen]
    return FlatLayout.of(selected), outside


@pytest.mark.parametrize("mode", BACKWARD_MODES)
def test_matrix_rows_equal_separate_backward_calls(mode):
    model = TwoHeads()
    x, y = batch()
    layout, outside = build(model, ["trunk.*", "head_a.*"])  # head_a: zero row for group b
    expected = manual_rows(model, x, y, layout.names)
    matrix = GradientMatrix(["a", "b"], layout)
    losses = group_losses(model, x, y)
    matrix.accumulate(list(losses.values()), outside, mode=mode)
    torch.testing.assert_close(matrix.values[0], expected["a"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(matrix.values[1], expected["b"], rtol=1e-5, atol=1e-6)
    head_a = slice(layout.offsets[layout.names.index("head_a.weight")], layout.size)
    assert torch.count_nonzero(matrix.values[1, head_a]) == 0
    for name, p in model.named_parameters():
        assert name in layout.names or p.grad is not None or not p.requires_grad


@pytest.mark.parametrize("mode", BACKWARD_MODES)
def test_outside_parameters_get_the_plain_sum(mode):
    model = TwoHeads()
    x, y = batch()
    layout, outside = build(model, ["trunk.*"])
    names = [n for n, p in model.named_parameters() if p.requires_grad and n not in layout.names]
    expected = manual_rows(model, x, y, names)
    matrix = GradientMatrix(["a", "b"], layout)
    matrix.accumulate(list(group_losses(model, x, y).values()), outside, mode=mode)
    got = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in names])
    torch.testing.assert_close(got, expected["a"] + expected["b"], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in layout.params), "selected grads must live in the matrix"


def test_sequential_and_batched_paths_agree():
    model = TwoHeads()
    x, y = batch(16)
    layout, outside = build(model, ["trunk.*", "head_*"])
    results = []
    for mode in BACKWARD_MODES:
        matrix = GradientMatrix(["a", "b"], layout)
        matrix.accumulate(list(group_losses(model, x, y).values()), outside, mode=mode)
        results.append(matrix.values.clone())
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", BACKWARD_MODES)
def test_two_micro_batches_add_up_to_one_batch(mode):
    model = TwoHeads()
    x, y = batch(10)
    layout, outside = build(model, ["trunk.*"])
    whole = GradientMatrix(["a", "b"], layout)
    whole.accumulate(list(group_losses(model, x, y).values()), outside, mode=mode)
    model.zero_grad(set_to_none=True)
    halves = GradientMatrix(["a", "b"], layout)
    for part in (slice(0, 4), slice(4, 10)):
        halves.accumulate(list(group_losses(model, x[part], y[part]).values()), outside, mode=mode)
    torch.testing.assert_close(halves.values, whole.values, rtol=1e-5, atol=1e-6)


def test_a_loss_without_graph_gives_a_zero_row():
    model = TwoHeads()
    x, y = batch()
    layout, outside = build(model, ["trunk.*"])
    for mode in BACKWARD_MODES:
        matrix = GradientMatrix(["a", "none"], layout)
        loss = group_losses(model, x, y)["a"]
        matrix.accumulate([loss, torch.tensor(0.0)], outside, mode=mode)
        assert torch.count_nonzero(matrix.values[1]) == 0
        assert torch.count_nonzero(matrix.values[0]) > 0
        model.zero_grad(set_to_none=True)


def test_auto_mode_is_sequential_on_cpu_and_batched_on_gpu():
    assert resolve_mode("auto", torch.device("cpu")) == "sequential"
    assert resolve_mode("auto", torch.device("cuda")) == "batched"
    assert resolve_mode("batched", torch.device("cpu")) == "batched"
