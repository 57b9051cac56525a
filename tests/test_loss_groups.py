"""Loss groups: weighted sums of terms and of other groups."""

from __future__ import annotations

import pytest
import torch

from gradsurg import GradsurgError, LossGroup, evaluate_groups


def square(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum()


def total(x: torch.Tensor) -> torch.Tensor:
    return x.sum()


def test_group_is_the_weighted_sum_of_its_terms():
    x = torch.tensor([1.0, 2.0])
    group = LossGroup("g", {"square": square, "total": total}, weights={"total": 0.5})
    assert group(x).item() == pytest.approx(5.0 + 0.5 * 3.0)


def test_groups_nest_with_weights_and_report_every_term():
    x = torch.tensor([1.0, 2.0])
    inner = LossGroup("inner", {"square": square}, weights={"square": 2.0})
    outer = LossGroup("outer", {"inner": inner, "total": total}, weights={"inner": 0.25})
    value, parts = outer.evaluate(x)
    assert value.item() == pytest.approx(0.25 * 10.0 + 3.0)
    assert parts["outer/inner/square"].item() == pytest.approx(5.0)
    assert parts["outer/inner"].item() == pytest.approx(10.0)
    assert parts["outer/total"].item() == pytest.approx(3.0)


def test_gradients_flow_through_groups():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    LossGroup("g", {"square": square}, weights={"square": 3.0})(x).backward()
    torch.testing.assert_close(x.grad, torch.tensor([6.0, 12.0]))


def test_evaluate_groups_keys_by_name_and_rejects_duplicates():
    x = torch.tensor([1.0])
    groups = [LossGroup("a", {"s": square}), LossGroup("b", {"t": total})]
    assert set(evaluate_groups(groups, x)) == {"a", "b"}
    with pytest.raises(GradsurgError, match="unique"):
        evaluate_groups([groups[0], groups[0]], x)


def test_bad_terms_and_weights_are_named():
    x = torch.tensor([1.0, 2.0])
    with pytest.raises(GradsurgError, match="'g/vector' must return a scalar"):
        LossGroup("g", {"vector": lambda v: v})(x)
    with pytest.raises(GradsurgError, match="unknown terms"):
        LossGroup("g", {"s": square}, weights={"typo": 1.0})
    with pytest.raises(GradsurgError, match="no terms"):
        LossGroup("g", {})


class Scaled(torch.nn.Module):
    """A learnable term: s * sum(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * x.sum()


def test_module_terms_are_parts_and_are_exposed_for_attaching():
    x = torch.tensor([1.0, 2.0])
    learned = Scaled()
    inner = LossGroup("inner", {"scaled": learned, "square": square})
    outer = LossGroup("outer", {"inner": inner, "total": total})
    assert outer(x).item() == pytest.approx(2.0 * 3.0 + 5.0 + 3.0)
    assert outer.modules() == {"outer/inner/scaled": learned}
    assert inner.modules() == {"inner/scaled": learned}
    outer(x).backward()
    assert learned.s.grad.item() == pytest.approx(3.0)  # d/ds of s * sum(x)
