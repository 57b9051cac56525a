"""`blockwise`: per-block combination equals the combiner on each block's columns by hand, and
per-exit groups with a block per layer equal a hand computation over the exits above it."""

from __future__ import annotations

import pytest
import torch
from models import Exits, exit_losses
from torch import nn

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS
from gradsurg.combiners.blockwise import Blockwise
from gradsurg.errors import ConfigError
from gradsurg.params import FlatLayout

pytestmark = pytest.mark.usefixtures("one_thread")


def layout_of(model: nn.Module, prefix: str) -> FlatLayout:
    return FlatLayout.of([(n, p) for n, p in model.named_parameters() if n.startswith(prefix)])


def test_one_block_equals_the_whole_vector():
    model = Exits()
    layout = layout_of(model, "layers.")
    matrix = torch.randn(3, layout.size, generator=torch.Generator().manual_seed(2))
    names = ["exit1", "exit2", "exit3"]
    one = Blockwise(inner="upgrad", blocks=["layers.*"])
    one.use_layout(layout)
    whole = COMBINERS.build("upgrad", where="combiner")(matrix, names)
    torch.testing.assert_close(one(matrix, names).gradient, whole.gradient, rtol=0, atol=1e-6)


@pytest.mark.parametrize("inner", ["pcgrad", "mgda", {"name": "project", "target": "a",
                                                      "reference": "b"}])
def test_blocks_equal_the_combiner_on_each_column_slice_by_hand(inner):
    model = Exits()
    layout = layout_of(model, "layers.")
    matrix = torch.randn(3, layout.size, generator=torch.Generator().manual_seed(3))
    names = ["a", "b", "c"]
    blockwise = Blockwise(inner=inner, blocks="per_layer")
    blockwise.use_layout(layout)
    got = blockwise(matrix, names)
    expected = torch.zeros(layout.size)
    for layer in range(3):
        columns = [i for name, start, shape in zip(layout.names, layout.offsets, layout.shapes)
                   if name.startswith(f"layers.{layer}.")
                   for i in range(start, start + shape.numel())]
        by_hand = COMBINERS.build(inner, where="combiner")  # a fresh copy per block
        expected[columns] = by_hand(matrix[:, columns], names).gradient
    torch.testing.assert_close(got.gradient, expected, rtol=0, atol=1e-6)
    assert {f"cosine/layers.{i}/a/b" for i in range(3)} <= set(got.info)
    assert set(blockwise.state_dict()["blocks"]) == {"layers.0", "layers.1", "layers.2"}


def test_per_exit_groups_with_a_block_per_layer_combine_only_the_exits_above_each_layer():
    """Through Surgery: layer j's gradient is UPGrad over the exits j+1.. that reach it."""
    model = Exits()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, {"name": "blockwise", "inner": "upgrad"},
                      include=["layers.*"])
    surgery.backward(exit_losses(model))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    reference = Exits()
    upgrad = COMBINERS.build("upgrad", where="combiner")
    losses = exit_losses(reference)
    for layer in range(3):
        params = [p for n, p in reference.named_parameters() if n.startswith(f"layers.{layer}.")]
        reaching = [name for i, name in enumerate(losses) if i >= layer]  # exits at or above
        rows = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
            losses[name], params, retain_graph=True)]) for name in reaching])
        combined = upgrad(rows, reaching).gradient if len(reaching) > 1 else rows[0]
        names = [n for n, _ in reference.named_parameters() if n.startswith(f"layers.{layer}.")]
        flat = torch.cat([got[n].flatten() for n in names])
        torch.testing.assert_close(flat, combined, rtol=0, atol=1e-6)
    assert surgery.diagnostics["conflict/layers.0/exit1/exit2"] in (0.0, 1.0)
    assert "cosine/layers.2/exit1/exit3" not in surgery.diagnostics  # exit 1 stops at layer 0


def test_a_block_without_a_named_group_gets_the_plain_sum_and_says_so():
    model = Exits()
    surgery = Surgery(model, None, {"name": "blockwise", "blocks": "per_layer",
                                    "inner": {"name": "project", "target": "exit3",
                                              "reference": "exit1"}},
                      include=["layers.*"])
    surgery.backward(exit_losses(model))
    assert surgery.diagnostics["blockwise/layers.0/fallback"] == 0.0
    assert surgery.diagnostics["blockwise/layers.1/fallback"] == 1.0  # exit1 does not reach


def test_bad_blocks_and_a_call_without_a_layout_are_one_line_errors():
    with pytest.raises(ConfigError, match="blocks must be 'per_layer' or a list"):
        Blockwise(blocks="per_block")
    blockwise = Blockwise(blocks=["layers.0.*", "layers.*"])
    with pytest.raises(ConfigError, match="matches several blocks"):
        blockwise.use_layout(layout_of(Exits(), "layers."))
    with pytest.raises(ConfigError, match="matches no block"):
        Blockwise(blocks=["layers.0.*"]).use_layout(layout_of(Exits(), "layers."))
    with pytest.raises(ConfigError, match="needs the parameters' layout"):
        Blockwise()(torch.ones(2, 3), ["a", "b"])


def test_state_round_trip_keeps_each_blocks_own_state():
    layout = layout_of(Exits(), "layers.")
    matrix = torch.randn(3, layout.size, generator=torch.Generator().manual_seed(4))
    first = Blockwise(inner="pcgrad")
    first.use_layout(layout)
    first(matrix, ["a", "b", "c"])
    state = first.state_dict()
    second = Blockwise(inner="pcgrad")
    second.load_state_dict(state)  # before its layout: kept until use_layout
    second.use_layout(layout)
    torch.testing.assert_close(second(matrix, ["a", "b", "c"]).gradient,
                               first(matrix, ["a", "b", "c"]).gradient)
