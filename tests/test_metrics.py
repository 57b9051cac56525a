"""GLUE metrics against scikit-learn / scipy on random inputs, plus degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from gradsurg.data.glue import get_task
from gradsurg.errors import ConfigError
from gradsurg.metrics import compute_metrics, primary_metric

TOL = 1e-5  # torchmetrics computes classification scores in float32


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("task", "num_labels"), [
    ("sst2", 2), ("qnli", 2), ("rte", 2), ("wnli", 2), ("mnli", 3)])
def test_accuracy_matches_sklearn(task: str, num_labels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    preds, labels = rng.integers(0, num_labels, size=(2, 200))
    got = compute_metrics(get_task(task), preds, labels)
    assert got == {"accuracy": pytest.approx(accuracy_score(labels, preds), abs=TOL)}
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy_match_sklearn(task: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    preds, labels = rng.integers(0, 2, size=(2, 150))
    got = compute_metrics(get_task(task), preds.tolist(), torch.as_tensor(labels))
    assert set(got) == {"f1", "accuracy"}
    assert got["f1"] == pytest.approx(f1_score(labels, preds, pos_label=1), abs=TOL)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_mcc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    preds = np.where(rng.random(300) < 0.7, labels, 1 - labels)  # correlated, so MCC != 0
    got = compute_metrics(get_task("cola"), preds, labels)
    assert got == {"mcc": pytest.approx(matthews_corrcoef(labels, preds), abs=TOL)}


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.uniform(0, 5, size=250)
    preds = labels + rng.normal(0, 1.5, size=250)
    got = compute_metrics(get_task("stsb"), preds, labels)
    assert got["pearson"] == pytest.approx(pearsonr(preds, labels)[0], abs=TOL)
    assert got["spearman"] == pytest.approx(spearmanr(preds, labels)[0], abs=TOL)


def test_spearman_with_ties_and_column_predictions() -> None:
    labels = [0.0, 1.0, 1.0, 2.5, 4.0, 4.0]
    preds = torch.tensor([[0.2], [0.9], [1.5], [1.5], [3.0], [5.0]])  # (N, 1) model output
    got = compute_metrics(get_task("STS-B"), preds, labels)
    assert got["spearman"] == pytest.approx(spearmanr(preds[:, 0], labels)[0], abs=TOL)


def test_logits_are_argmaxed() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert compute_metrics(get_task("mnli"), logits, [1, 0, 0])["accuracy"] == pytest.approx(2 / 3)


# --- degenerate inputs: MCC/F1 0.0 as GLUE reports them, correlations None; never NaN


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
@pytest.mark.parametrize(("preds", "labels"), [
    ([1, 1, 1, 1], [0, 1, 0, 1]),  # constant predictions
    ([0, 1, 0, 1], [1, 1, 1, 1]),  # constant labels
    ([1, 1, 1], [1, 1, 1]),        # both constant and equal (torchmetrics alone says 1)
    ([0, 0, 0], [1, 1, 1]),        # both constant and opposite (torchmetrics alone says -1)
])
def test_mcc_undefined_is_zero(preds: list[int], labels: list[int]) -> None:
    assert compute_metrics(get_task("cola"), preds, labels) == {"mcc": 0.0}
    assert matthews_corrcoef(labels, preds) == 0.0


@pytest.mark.parametrize(("preds", "labels"), [
    ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]),
    ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]),
    ([1.5], [3.0]),
])
def test_correlation_undefined_is_none(preds: list[float], labels: list[float]) -> None:
    """Undefined, not 0.0: a 0.00 would read like a measured absence of correlation."""
    assert compute_metrics(get_task("stsb"), preds, labels) == {"pearson": None, "spearman": None}


def test_f1_without_positives_is_zero() -> None:
    got = compute_metrics(get_task("mrpc"), [0, 0, 0], [0, 0, 0])
    assert got == {"f1": 0.0, "accuracy": 1.0}


def test_perfect_and_inverse() -> None:
    cola = get_task("cola")
    assert compute_metrics(cola, [0, 1, 1, 0], [0, 1, 1, 0])["mcc"] == pytest.approx(1.0)
    assert compute_metrics(cola, [1, 0, 0, 1], [0, 1, 1, 0])["mcc"] == pytest.approx(-1.0)
    got = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert got["pearson"] == pytest.approx(-1.0, abs=TOL)
    assert got["spearman"] == pytest.approx(-1.0, abs=TOL)


@pytest.mark.parametrize(("task", "preds", "labels", "match"), [
    ("sst2", [0, 1], [0, 1, 1], "2 predictions for 3 labels"),
    ("sst2", [], [], "zero examples"),
    ("sst2", [0, 2], [0, 1], r"class ids in \[0, 2\)"),
    ("sst2", [0.5, 1.0], [0, 1], "non-integer"),
    ("stsb", [1.0, float("nan")], [1.0, 2.0], "finite"),
    ("stsb", [[1.0, 2.0]], [1.0], "1-D"),
])
def test_bad_inputs(task: str, preds: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(get_task(task), preds, labels)


def test_primary_metric() -> None:
    expected = {"sst2": "accuracy", "qnli": "accuracy", "rte": "accuracy", "mnli": "accuracy",
                "wnli": "accuracy", "mrpc": "f1", "qqp": "f1", "cola": "mcc", "stsb": "pearson"}
    assert {task: primary_metric(get_task(task)) for task in expected} == expected
    assert primary_metric(get_task("STS-B")) == "pearson"
    with pytest.raises(ConfigError, match="allowed"):
        primary_metric(get_task("squad"))
