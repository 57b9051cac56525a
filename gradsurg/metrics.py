"""GLUE metrics as the GLUE benchmark reports them, as fractions (not percentages).

* accuracy: sst2, qnli, rte, mnli, wnli
* f1 (binary, positive class 1) and accuracy: mrpc, qqp
* mcc (Matthews correlation): cola
* pearson and spearman: stsb

Never NaN. MCC is 0.0 when predictions or labels are constant (as scikit-learn does, which
GLUE's own scorer used) and F1 is 0.0 when there are no positive predictions and no positive
labels, the conventions GLUE reports. Pearson and Spearman are *undefined* (None, written as
`null` in JSON and shown as "undefined") on fewer than two rows or when either side is
constant: a 0.00 there would read like a measured "no correlation".
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import (
    binary_f1_score,
    multiclass_accuracy,
    multiclass_matthews_corrcoef,
)

from gradsurg.data.glue import TaskSpec


def primary_metric(task: TaskSpec) -> str:
    """The single number used to pick checkpoints: accuracy; f1 for mrpc/qqp; mcc for cola;
    pearson for stsb (``task.primary_metric``; a name is resolved once, by
    :func:`gradsurg.data.glue.get_task`, where it enters)."""
    return task.primary_metric


def _as_1d(values: Any, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().cpu()
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor


def _class_ids(values: Any, what: str, num_labels: int) -> torch.Tensor:
    """Integer class ids in [0, num_labels); (N, C) scores are reduced with argmax."""
    tensor = torch.as_tensor(values).detach().cpu()
    if tensor.ndim == 2 and tensor.shape[1] == num_labels and num_labels > 1:
        tensor = tensor.argmax(dim=1)
    tensor = _as_1d(tensor, what)
    if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
        raise ValueError(f"{what} must be class ids, got non-integer values")
    tensor = tensor.long()
    if tensor.numel() and (tensor.min() < 0 or tensor.max() >= num_labels):
        raise ValueError(f"{what} must be class ids in [0, {num_labels}), got values in "
                         f"[{int(tensor.min())}, {int(tensor.max())}]")
    return tensor


def _is_constant(tensor: torch.Tensor) -> bool:
    return bool((tensor == tensor[0]).all())


def _mcc(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    if _is_constant(preds) or _is_constant(labels):
        return 0.0  # zero denominator; torchmetrics would return +-1 in some of these cases
    return float(multiclass_matthews_corrcoef(preds, labels, num_classes=num_labels,
                                             validate_args=False))


def _correlation(fn: Any, preds: torch.Tensor, labels: torch.Tensor) -> float | None:
    if preds.numel() < 2 or _is_constant(preds) or _is_constant(labels):
        return None  # undefined (zero variance); see module doc
    return float(fn(preds, labels))


def _classification(spec: TaskSpec, predictions: Any, labels: Any) -> dict[str, float]:
    # `_class_ids` has checked what torchmetrics' argument validation would (integer ids in
    # range, equal lengths), so it is skipped: a dense sweep computes this for every point.
    preds = _class_ids(predictions, "predictions", spec.num_labels)
    target = _class_ids(labels, "labels", spec.num_labels)
    _check_lengths(preds, target)
    values: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            values[name] = float(multiclass_accuracy(preds, target, num_classes=spec.num_labels,
                                                     average="micro", validate_args=False))
        elif name == "f1":
            values[name] = float(binary_f1_score(preds, target, validate_args=False))
        elif name == "mcc":
            values[name] = _mcc(preds, target, spec.num_labels)
    return values


def _regression(predictions: Any, labels: Any) -> dict[str, float | None]:
    preds = _as_1d(predictions, "predictions").double()
    target = _as_1d(labels, "labels").double()
    _check_lengths(preds, target)
    if not (torch.isfinite(preds).all() and torch.isfinite(target).all()):
        raise ValueError("predictions and labels must be finite numbers")
    return {"pearson": _correlation(pearson_corrcoef, preds, target),
            "spearman": _correlation(spearman_corrcoef, preds, target)}


def _check_lengths(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.numel() != target.numel():
        raise ValueError(f"got {preds.numel()} predictions for {target.numel()} labels")
    if preds.numel() == 0:
        raise ValueError("cannot compute metrics on zero examples")


def compute_metrics(task: TaskSpec, predictions: Any, labels: Any
                    ) -> dict[str, float | None]:
    """GLUE metrics for one task as python floats, keyed ``accuracy``/``f1``/``mcc``/
    ``pearson``/``spearman`` (the task's ``TaskSpec.metrics``).

    ``predictions`` are class ids (or (N, C) scores, reduced with argmax) for classification
    and floats (shape (N,) or (N, 1)) for regression; lists, numpy arrays and tensors work.
    """
    if task.is_regression:
        return _regression(predictions, labels)
    return _classification(task, predictions, labels)
