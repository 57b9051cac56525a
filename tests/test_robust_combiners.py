"""Robust aggregators: `krum` (Blanchard et al. 2017) and `trimmed_mean` (Yin et al. 2018)
against numpy renderings of the papers' rules and torchjd 0.18, their robustness to outlying
rows, and their limits on the number of groups (bad options: test_combiner_options.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from combiner_checks import as64, run
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import ordinary_matrices

from gradsurg.combiners import Krum, TrimmedMean
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

FEW = settings(max_examples=30, deadline=None)


def krum_scores(m: np.ndarray, f: int, squared: bool = True) -> list[float]:
    """The paper's score of each row by brute force (its squared distances, or torchjd's
    plain ones): the sum over its k - f - 2 nearest other rows."""
    k = len(m)
    scores = []
    for i in range(k):
        distances = sorted(float(np.sum((m[i] - m[j]) ** 2)) for j in range(k) if j != i)
        if not squared:
            distances = [d**0.5 for d in distances]
        scores.append(sum(distances[: k - f - 2]))
    return scores


def krum_reference(m: np.ndarray, f: int, selected: int, squared: bool = True) -> np.ndarray:
    """The `selected` lowest scores' rows averaged, times k; rows tied at the cut share the
    places left equally (so the row order cannot matter)."""
    scores = np.array(krum_scores(m, f, squared))
    cut = np.sort(scores)[selected - 1]
    slack = 1e-9 * max(np.abs(scores).max(), 1e-300)  # equal up to rounding: a tie
    below, tied = scores < cut - slack, np.abs(scores - cut) <= slack
    weights = below / selected + tied * (selected - below.sum()) / (selected * tied.sum())
    return len(m) * (weights[:, None] * m).sum(axis=0)


def trimmed_reference(m: np.ndarray, trim: int) -> np.ndarray:
    k = len(m)
    columns = np.sort(m, axis=0)
    return k * columns[trim : k - trim].mean(axis=0)


@FEW
@given(matrix=ordinary_matrices(min_rows=3, max_rows=7).map(lambda m: m.double()),
       data=st.data())
def test_krum_matches_the_papers_rule(matrix, data):
    k = matrix.shape[0]
    f = data.draw(st.integers(0, k - 3))
    selected = data.draw(st.integers(1, k))
    m = as64(matrix)
    for squared in (True, False):
        out = run(Krum(n_byzantine=f, n_selected=selected, squared=squared), matrix)
        expected = krum_reference(m, f, selected, squared)
        np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12 * np.abs(m).max())


@FEW
@given(matrix=ordinary_matrices(min_rows=1, max_rows=7), data=st.data())
def test_trimmed_mean_matches_the_papers_rule(matrix, data):
    k = matrix.shape[0]
    trim = data.draw(st.integers(0, (k - 1) // 2))
    out = run(TrimmedMean(trim=trim), matrix)
    expected = trimmed_reference(as64(matrix), trim)
    bound = (1e-6 if matrix.dtype == torch.float32 else 1e-12) * np.abs(expected).max()
    assert np.abs(out - expected).max() <= bound


@pytest.mark.parametrize(("k", "n"), [(3, 5), (5, 8), (7, 4)])
def test_both_agree_with_torchjd(k, n):
    """Every valid (n_byzantine, n_selected) and trim: k times torchjd's output; Krum with
    plain distances (`squared: false`), which is torchjd's score."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(k)
    matrix = torch.randn(k, n, generator=generator, dtype=torch.float64)
    ties = 0
    for f, selected in itertools.product(range(k - 2), range(1, k + 1)):
        ours = Krum(n_byzantine=f, n_selected=selected, squared=False)(matrix).gradient
        theirs = aggregation.Krum(n_byzantine=f, n_selected=selected)(matrix)
        if not torch.allclose(ours, k * theirs, rtol=1e-12, atol=1e-12):
            # only a tie at the cut may differ: torchjd's topk keeps one of the tied rows,
            # ours share the places left. With k - f - 2 = 1 nearest neighbour, two mutual
            # nearest rows always tie.
            gram = matrix @ matrix.T
            mine = Krum(n_byzantine=f, n_selected=selected, squared=False).weights(gram)[0]
            other = aggregation.KrumWeighting(n_byzantine=f, n_selected=selected)(gram) > 0
            scores = np.array(krum_scores(as64(matrix), f, squared=False))
            cut = scores[other.numpy()].max()
            chosen = mine.numpy() > 0
            assert np.all(scores[chosen] <= cut * (1 + 1e-12))  # nothing above torchjd's cut
            assert np.isclose(mine.sum().item(), k)
            full = scores < cut * (1 - 1e-12)
            np.testing.assert_allclose(mine.numpy()[full], k / selected, rtol=1e-12)
            assert np.isclose(scores[~full & chosen], cut, rtol=1e-12).all()  # the tie
            ties += 1
    assert ties <= k  # a few tie cases at most, never a different rule
    for trim in range((k - 1) // 2 + 1):
        ours = TrimmedMean(trim=trim)(matrix).gradient
        torch.testing.assert_close(ours, k * aggregation.TrimmedMean(trim_number=trim)(matrix),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("f", [1, 2])
def test_krum_never_selects_an_outlier(f):
    """k >= 2f + 3 honest-looking rows around a common gradient and f far away: the selected
    rows are honest ones (the paper's setting)."""
    generator = torch.Generator().manual_seed(f)
    k = 2 * f + 5
    honest = 1.0 + 0.1 * torch.randn(k - f, 6, generator=generator, dtype=torch.float64)
    outliers = 50 * torch.randn(f, 6, generator=generator, dtype=torch.float64)
    matrix = torch.cat([outliers, honest])  # the outliers first: a position bias would show
    combiner = Krum(n_byzantine=f, n_selected=k - 2 * f)
    out = combiner(matrix).gradient
    weights = combiner.weights(matrix @ matrix.T)[0]
    assert not weights[:f].any() and int((weights > 0).sum()) == k - 2 * f
    assert (out / k - honest.mean(0)).abs().max() < 0.3


def test_trimmed_mean_is_bounded_by_the_honest_rows():
    """With b outliers, each coordinate of the trimmed mean lies within the honest values'."""
    generator = torch.Generator().manual_seed(0)
    honest = torch.randn(5, 30, generator=generator, dtype=torch.float64)
    outliers = torch.tensor([[1e6] * 30, [-1e6] * 15 + [1e6] * 15], dtype=torch.float64)
    out = TrimmedMean(trim=2)(torch.cat([honest[:2], outliers, honest[2:]])).gradient / 7
    assert (out <= honest.max(0).values + 1e-12).all()
    assert (out >= honest.min(0).values - 1e-12).all()
    # trim 0 is the plain sum
    torch.testing.assert_close(TrimmedMean(trim=0)(honest).gradient, honest.sum(0))


def test_float32_near_the_top_of_the_range():
    """Summed in float64: finite wherever the true result fits in float32 (3 x 1e38), and
    infinite, like `sum`'s, only where it does not (3 x 3e38)."""
    small = torch.full((3, 4), 1e38, dtype=torch.float32)
    torch.testing.assert_close(TrimmedMean(trim=1)(small).gradient, 3 * small[0])
    big = torch.full((3, 4), 3e38, dtype=torch.float32)
    assert torch.isinf(TrimmedMean(trim=1)(big).gradient).all()
    assert torch.isinf(big.sum(0)).all()


def test_too_few_groups_are_refused_when_bound():
    with pytest.raises(ConfigError, match=r"'krum': needs at least 4 loss groups"):
        Krum(n_byzantine=1)(torch.ones(3, 2))
    with pytest.raises(ConfigError, match=r"'krum': needs at least 5 loss groups"):
        Krum(n_selected=5)(torch.ones(4, 2))
    with pytest.raises(ConfigError, match=r"'trimmed_mean': trim 2 needs at least 5"):
        TrimmedMean(trim=2)(torch.ones(4, 2))


# ---- training: per-exit groups give the 3+ rows both need --------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("combiner", [{"name": "krum", "n_selected": 2},
                                      {"name": "trimmed_mean", "trim": 1}])
def test_both_train_a_tiny_romebert_recipe_with_per_exit_groups(combiner, tiny_bert_dir,
                                                                shared_glue_dir, tmp_path):
    import json
    import math

    from glue_configs import short_glue_config

    from gradsurg.programs.multiexit_glue import run as run_glue

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", epochs=1,
                         exit_groups="sd", combiner=combiner)
    results = run_glue(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 2
    assert all(math.isfinite(m["accuracy"]) for m in results["exit_metrics"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(line["skipped_steps"] == 0 for line in log)
    assert all(any(key.startswith(f"{combiner['name']}/") for key in line) for line in log)


@pytest.mark.parametrize("combiner", ["{name: krum, n_selected: 3}", "{name: trimmed_mean}"])
def test_both_train_the_digits_recipe_with_per_exit_groups(combiner, tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", ["exit_groups=true", f"combiner={combiner}",
                                               "epochs=2"])
    accuracies = train(config, tmp_path)["exit_accuracy"]
    assert accuracies[-1] > 0.6, accuracies  # chance is 0.1
