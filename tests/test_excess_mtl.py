"""`excess_mtl` (He et al., ICML 2024): a numpy rendering of eqs. 6, 7 and 9 over steps,
torchjd 0.18's `ExcessMTL` step by step, groups kept by name, errors and training; the
shared properties, the checkpoint round trip and bad options are in test_combiner_properties.py,
test_combiner_state.py and test_combiner_options.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gradsurg.combiners import ExcessMTL

pytestmark = pytest.mark.usefixtures("one_thread")


def steps(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.tensor([[1.0], [4.0], [0.1]], dtype=torch.float64)
    return [scales * torch.randn(3, 6, generator=generator, dtype=torch.float64)
            for _ in range(count)]


def reference(matrices, eta: float, warmup: int) -> list[np.ndarray]:
    """The paper's rule in numpy: S += g^2, E = sum g^2 / sqrt(S + 1e-7), a <- a exp(eta E/E0)
    normalized (E0: first step's E, used raw that step; or the warm-up mean); k sum a_i g_i."""
    k, n = matrices[0].shape
    squares, a = np.zeros((k, n)), np.full(k, 1.0 / k)
    baseline, sums, out = None, np.zeros(k), []
    for t, matrix in enumerate(matrices, start=1):
        g = matrix.numpy()
        squares += g * g
        excess = (g * g / np.sqrt(squares + 1e-7)).sum(axis=1)
        if t <= warmup:
            sums += excess
        else:
            if baseline is None:
                baseline = sums / warmup if warmup else excess
                ratio = excess / (baseline + 1e-7) if warmup else excess
            else:
                ratio = excess / (baseline + 1e-7)
            a = a * np.exp(eta * ratio)
            a = a / a.sum()
        out.append(k * a @ g)
    return out


@pytest.mark.parametrize(("eta", "warmup"), [(1.0, 0), (0.3, 0), (1.0, 3)])
def test_matches_the_papers_rule_over_steps(eta, warmup):
    matrices = steps(7)
    combiner = ExcessMTL(eta=eta, warmup_steps=warmup)
    for matrix, expected in zip(matrices, reference(matrices, eta, warmup)):
        np.testing.assert_allclose(combiner(matrix).gradient.numpy(), expected, rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("warmup", [0, 2])
def test_agrees_with_torchjd_step_by_step(warmup):
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours = ExcessMTL(eta=0.7, warmup_steps=warmup)
    theirs = aggregation.ExcessMTL(robust_step_size=0.7, n_warmup_steps=warmup)
    for matrix in steps(6, seed=1):
        torch.testing.assert_close(ours(matrix).gradient, 3 * theirs(matrix), rtol=1e-10,
                                   atol=1e-12)


def test_the_group_with_the_larger_excess_risk_gains_weight():
    """A group whose gradient stays large relative to its history keeps its excess risk
    high: its weight grows past 1/k."""
    combiner = ExcessMTL(eta=1.0)
    generator = torch.Generator().manual_seed(2)
    for step in range(1, 8):
        matrix = torch.randn(2, 5, generator=generator, dtype=torch.float64)
        matrix[0] *= 2.0**step  # growing: its excess risk rises against its baseline
        out = combiner(matrix, ["hard", "easy"])
    assert out.info["excess_mtl/max_weight"] > 0.9
    assert float(torch.softmax(combiner.logits, 0)[0]) > 0.9


def test_state_is_kept_by_group_name():
    combiner = ExcessMTL()
    combiner(torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64), ["a", "b"])
    squares_b = combiner.squares[1].clone()
    combiner(torch.tensor([[0.0, 1.0], [3.0, 0.0]], dtype=torch.float64), ["b", "c"])
    torch.testing.assert_close(combiner.squares[0], squares_b + torch.tensor([0.0, 1.0],
                                                                               dtype=torch.float64))
    torch.testing.assert_close(combiner.squares[1], torch.tensor([9.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="selected parameters changed"):
        combiner(torch.zeros(2, 5, dtype=torch.float64), ["b", "c"])


def test_trains_the_digits_recipe(tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", ["combiner=excess_mtl", "epochs=2"])
    results = train(config, tmp_path)
    assert results["exit_accuracy"][-1] > 0.6, results["exit_accuracy"]  # chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["excess_mtl/max_weight"]) for line in lines)
