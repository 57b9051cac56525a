"""Parameter selection and flat views."""

from __future__ import annotations

import pytest
import torch
from models import TwoHeads, batch, group_losses

from gradsurg import ConfigError
from gradsurg.params import FlatLayout, match_patterns, reached_parameters, trainable_parameters


def test_include_and_exclude_globs():
    named = trainable_parameters(TwoHeads())
    assert "frozen.weight" not in [n for n, _ in named]
    picked = match_patterns(named, include=["trunk.*", "head_a.*"], exclude=["*.bias"])
    assert [n for n, _ in picked] == ["trunk.0.weight", "trunk.2.weight", "trunk.3.weight",
                                      "head_a.weight"]
    with pytest.raises(ConfigError, match="exclude pattern"):
        match_patterns(named, exclude=["trunk.*.bais"])


def test_reached_parameters_walks_the_graph():
    model = TwoHeads()
    x, y = batch()
    losses = group_losses(model, x, y)
    params = [p for _, p in trainable_parameters(model)]
    reached_a = reached_parameters(losses["a"], params)
    reached_b = reached_parameters(losses["b"], params)
    assert id(model.head_a.weight) in reached_a and id(model.head_a.weight) not in reached_b
    assert id(model.only_b.weight) in reached_b and id(model.only_b.weight) not in reached_a
    assert id(model.trunk[0].weight) in reached_a & reached_b
    assert reached_parameters(torch.tensor(1.0), params) == set()


def test_flat_layout_views_and_flatten_round_trip():
    model = TwoHeads()
    named = match_patterns(trainable_parameters(model), include=["trunk.*"])
    layout = FlatLayout.of(named)
    assert layout.size == sum(p.numel() for _, p in named)
    flat = layout.flatten([p.detach() for _, p in named])
    for (_, p), view in zip(named, layout.views(flat), strict=True):
        assert torch.equal(view, p.detach())
    rows = torch.stack([flat, 2 * flat])
    assert all(v.shape == (2, *p.shape) for (_, p), v in zip(named, layout.views(rows),
                                                              strict=True))


def test_mixed_dtypes_are_refused():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="one dtype and device"):
        FlatLayout.of([("a", a), ("b", b)])
