"""A combiner called directly is a plain function of its input's values: it builds no autograd
graph, even on a matrix that requires grad (as torchjd's aggregators promise), and its state
keeps none."""

from __future__ import annotations

import pytest
import torch

from gradsurg.combiners import COMBINERS
from gradsurg.registry import BUILT_IN

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["g0", "g1", "g2"]
#: Options for the built-ins that need some; every other one is built from its bare name.
SPECS = {
    "project": {"name": "project", "target": "g0", "reference": "g1"},
    "merge": {"name": "merge", "groups": ["g1", "g2"], "inner": "upgrad", "into": "aux",
              "then": {"name": "project", "target": "g0", "reference": "aux"}},
}
BUILT_INS = sorted(e.name for e in COMBINERS.entries() if e.source == BUILT_IN)


def build(name: str):
    """The combiner, and for one that splits columns by parameter (blockwise) a layout of
    two 2-number parameters in two layers over the matrix's 4 columns."""
    combiner = COMBINERS.build(SPECS.get(name, name), where="combiner")
    if getattr(combiner, "needs_layout", False):
        from gradsurg.params import FlatLayout

        combiner.use_layout(FlatLayout.of([(f"layers.{i}.w", torch.nn.Parameter(torch.ones(2)))
                                           for i in range(2)]))
    return combiner


def leaf_matrix() -> torch.Tensor:
    rows = torch.tensor([[1.0, 0.2, -0.3, 0.0], [-0.6, 0.5, 0.1, 0.2], [0.1, -0.7, 0.4, 0.3]])
    return rows.requires_grad_()


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


@pytest.mark.parametrize("name", BUILT_INS)
def test_a_direct_call_builds_no_graph(name):
    combiner = build(name)
    matrix = leaf_matrix()
    for _ in range(2):  # the second call runs on state kept from the first
        out = combiner(matrix * 1.0, NAMES)  # a non-leaf input, part of a graph
        assert not out.gradient.requires_grad and out.gradient.grad_fn is None, name
        assert torch.isfinite(out.gradient).all()
    for tensor in tensors_in(combiner.state_dict()):
        assert not tensor.requires_grad and tensor.grad_fn is None, name
    # and the values are those of the same call on a plain tensor
    fresh = build(name)
    plain = leaf_matrix().detach()
    expected = fresh(plain, NAMES).gradient
    again = build(name)
    assert torch.equal(again(leaf_matrix(), NAMES).gradient, expected), name


def test_a_shared_gramian_that_requires_grad_builds_no_graph():
    matrix = leaf_matrix()
    gram = (matrix @ matrix.T).to(torch.float64)
    out = COMBINERS.build("upgrad", where="combiner")(matrix, NAMES, gram=gram)
    assert out.gradient.grad_fn is None and not out.gradient.requires_grad


def test_every_built_in_is_checked():
    """No built-in needs options that this file does not know (it would fail to build)."""
    for name in BUILT_INS:
        assert COMBINERS.build(SPECS.get(name, name), where="combiner").name == name
