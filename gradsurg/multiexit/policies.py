"""Exit policies: when does an example stop at an exit instead of running more layers?

A policy sees one exit's outputs at a time, for the rows still running, and answers with a
boolean "leave now" per row. Anything a rule must remember across exits (PABEE's patience
counter, ELBERT's window) lives in a per-row ``state`` dict of tensors whose first dimension
is the row, so a runner that drops finished rows can drop their state with the same index.
The same ``decide`` calls drive the layer-by-layer runner and the simulation over
precomputed exit outputs, which is why the two agree.

Exit indices are 0-based (``layer`` 0 is the exit after the first encoder layer); the
user-facing ``fixed`` policy counts layers from 1, like the per-exit tables (L1..Ln).
New policies subclass :class:`ExitPolicy` and register with bare ``@POLICIES.register`` under
their ``name`` (or through the ``gradsurg.policies`` entry point group); a recipe's
``exit_policy`` becomes an object once, with ``POLICIES.build(spec, where=...)``, and a sweep
varies that object with :meth:`ExitPolicy.with_param`.

A policy also owns its sweeps: :meth:`ExitPolicy.default_sweep` (the fixed list a trade-off
sweep tries) and :meth:`ExitPolicy.dense_family` (what the budget-fair dense sweep varies and
the per-exit score its values come from), so a plugin's policy gets both by defining them.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry

__all__ = [
    "DEFAULT_THRESHOLDS",
    "POLICIES",
    "ConfidenceWindowPolicy",
    "DenseFamily",
    "EntropyPolicy",
    "ExitPolicy",
    "FixedPolicy",
    "MaxProbPolicy",
    "NormalizedEntropyPolicy",
    "PatiencePolicy",
    "PolicyState",
    "max_probability",
    "normalized_entropy",
    "patience_scores",
    "prediction_entropy",
]

PolicyState = dict[str, Tensor]
"""Per-row memory of a policy: every tensor is indexed by row first."""


def prediction_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dim, shape ``logits.shape[:-1]``.

    ``softmax`` is shift-invariant, so huge logits (1e4) do not overflow, unlike the papers'
    ``exp``-based code; ``special.entr`` gives exactly 0 for zero probabilities, so a
    one-hot-like distribution has entropy 0. Half precision inputs are computed in float32.
    """
    return _entropy(_check_classes(logits)).clamp_min(0.0) + 0.0  # -0.0 -> 0.0 for printing


def _check_classes(logits: Tensor) -> Tensor:
    if logits.ndim == 0:
        raise ValueError("logits must have a class dimension, got a scalar")
    if logits.shape[-1] == 0:
        raise ValueError("logits have zero classes")
    if logits.shape[-1] == 1:
        raise ConfigError("entropy needs a classification task: logits have a single output "
                          "(regression), whose entropy is undefined")
    return logits


def _entropy(logits: Tensor) -> Tensor:
    # Four kernels: policies call this after every layer, where small ops dominate at batch 1.
    return _entropy_of(torch.softmax(_at_least_float32(logits), dim=-1))


def _entropy_of(probs: Tensor) -> Tensor:
    return torch.special.entr(probs).sum(dim=-1)


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


DEFAULT_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
"""Entropy thresholds of the sweep, from "never exit early" (0) upwards."""


@dataclass(frozen=True)
class DenseFamily:
    """What the dense sweep of a recipe's policy varies (see
    :mod:`gradsurg.multiexit.evaluation.dense_sweeps`).

    ``rule`` carries the parameters kept fixed (``params``, as results.json reports them) and
    ``parameter`` is the one swept. With a ``score`` (``[L, N, C]`` logits -> ``[L-1, N]``;
    the last exit is always taken) the values are the points where some example's exit
    changes: the rule leaves at the first exit whose score is below the value
    (``leaves_below``) or above it, for values up to ``upper``. Without one the parameter is
    an integer and every value of ``rule.default_sweep`` is tried.
    """

    rule: ExitPolicy
    params: dict[str, Any]
    parameter: str
    score: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)
    leaves_below: bool = True
    upper: float = math.inf


class ExitPolicy(ABC):
    """One exit rule. Subclasses are dataclasses whose fields are the rule's parameters."""

    name: ClassVar[str]
    classification_only: ClassVar[bool] = True
    sweep_parameter: ClassVar[str | None] = None
    """The parameter a trade-off sweep varies (``threshold``, ``patience``, ...)."""
    default_values: ClassVar[tuple[float, ...] | None] = None
    """The fixed list of :meth:`default_sweep`; None: the layers L..1."""
    dense_score: ClassVar[Callable[[Tensor], Tensor] | None] = None
    """A threshold rule's score of one exit's ``[..., C]`` logits (``[...]``), compared with
    its ``sweep_parameter``: what :meth:`dense_family` derives the dense sweep's values from.
    None (and no :meth:`dense_family` of its own): the rule has no dense sweep."""
    leaves_below: ClassVar[bool] = True
    """Whether the rule leaves when ``dense_score`` is below its threshold (else above)."""
    threshold_upper: ClassVar[float] = math.inf
    """The largest threshold the rule accepts."""

    def default_sweep(self, num_layers: int) -> list[float]:
        """The values of ``sweep_parameter`` a trade-off sweep tries when the recipe gives
        none, on a model with ``num_layers`` exits."""
        if self.default_values is not None:
            return list(self.default_values)
        return [float(layer) for layer in range(num_layers, 0, -1)]

    @classmethod
    def dense_family(cls, params: Mapping[str, Any] | None = None, *, regression: bool
                     ) -> DenseFamily | None:
        """What the dense sweep varies for a recipe asking for this rule with ``params`` (the
        parameters the recipe set); None: this rule has no dense sweep (its fixed list is all
        there is, and the evaluation says so).

        Regression (one output): PABEE's rule, ``patience`` with ``tolerance`` swept, for any
        rule but ``fixed``. A threshold rule (``dense_score``): its threshold, the other
        parameters as the recipe set them.
        """
        params = dict(params or {})
        if regression:
            return PatiencePolicy.tolerance_family(int(params.get("patience", 1)))
        score, swept = cls.dense_score, cls.sweep_parameter
        if score is None or swept is None:
            return None
        fixed = {k: v for k, v in params.items() if k != swept}
        return DenseFamily(cls(**fixed), fixed, swept,  # type: ignore[abstract]
                           score=lambda logits: score(logits[:-1].float()),
                           leaves_below=cls.leaves_below, upper=cls.threshold_upper)

    def check_model(self, num_outputs: int, num_layers: int) -> None:
        """Refuse a model this rule cannot judge (e.g. entropy of a regression output)."""
        if self.classification_only and num_outputs < 2:
            raise ConfigError(f"exit policy {self.name!r} needs a classification model; this "
                              "model has a single (regression) output; allowed: patience, fixed")

    def start(self, num_rows: int, device: torch.device) -> PolicyState:
        """Fresh per-row state before the first exit."""
        return {}

    def needs_outputs(self, layer: int) -> bool:
        """Whether exit ``layer``'s head must run for this rule (``fixed`` skips the others)."""
        return True

    @abstractmethod
    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        """Rows that leave at exit ``layer`` (bool ``[rows]``); may update ``state`` in place.

        ``outputs`` are the exit's ``[rows, C]`` logits (``None`` when ``needs_outputs`` said
        no). The last exit is always taken by the caller, whatever this returns.
        """

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"

    def with_param(self, parameter: str, value: float) -> ExitPolicy:
        """This rule with ``parameter`` set to ``value``, validated as a recipe's value is.

        Sweeps build their policy once and call this per value instead of looking the name
        up again. A whole number becomes an ``int`` for an integer parameter (``patience``,
        ``layer``), because YAML lists and threshold arrays hand sweep values over as floats.
        """
        current = getattr(self, parameter)
        typed: Any = value
        if isinstance(current, int) and not isinstance(current, bool) \
                and float(value).is_integer():
            typed = int(value)
        try:
            return dataclasses.replace(self, **{parameter: typed})  # type: ignore[type-var]
        except (TypeError, ValueError, OverflowError) as error:
            raise ConfigError(f"exit policy {self.name!r}: {parameter}={value!r} is invalid "
                              f"({error})") from None


POLICIES: Registry[type[ExitPolicy]] = Registry("exit policy", "gradsurg.policies",
                                                base=ExitPolicy)
"""Exit policies by name; ``POLICIES.build(spec, where=...)`` turns a recipe's ``exit_policy``
(a name or ``{name, **parameters}``) or an :class:`ExitPolicy` into the rule."""


def _threshold(name: str, value: Any, *, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} is invalid; allowed: a number in [0, {upper}]")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= upper:
        raise ConfigError(f"{name}={value!r} is out of range; allowed: a number in [0, {upper}]")
    return value


def _count(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} is invalid; allowed: an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{name}={value!r} is out of range; allowed: an integer >= {minimum}")
    return value


@POLICIES.register
@dataclass
class EntropyPolicy(ExitPolicy):
    """DeeBERT/RomeBERT: leave at the first exit whose prediction entropy (nats) < threshold.

    Threshold 0 never leaves early (entropy is never negative); NaN outputs never leave.
    """

    name: ClassVar[str] = "entropy"
    sweep_parameter: ClassVar[str] = "threshold"
    default_values: ClassVar[tuple[float, ...]] = DEFAULT_THRESHOLDS
    dense_score = staticmethod(prediction_entropy)
    threshold: float = 0.1

    def __post_init__(self) -> None:
        self.threshold = _threshold("threshold", self.threshold)

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        assert outputs is not None
        return _entropy(outputs) < self.threshold


def normalized_entropy(logits: Tensor) -> Tensor:
    """Entropy divided by its maximum, log(C): in [0, 1] for any number of classes."""
    return _entropy(_check_classes(logits)) / math.log(logits.shape[-1])


#: The default sweep of a threshold on the normalized entropy.
NORMALIZED_THRESHOLDS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


@dataclass
class UnitThresholdPolicy(ExitPolicy):
    """A rule on a score in [0, 1] (a normalized entropy, a probability): its `threshold`
    must lie there too, and the dense sweep stops at 1."""

    sweep_parameter: ClassVar[str] = "threshold"
    threshold_upper: ClassVar[float] = 1.0
    threshold: float = 0.1

    def __post_init__(self) -> None:
        self.threshold = _threshold("threshold", self.threshold, upper=1.0)


@POLICIES.register
@dataclass
class NormalizedEntropyPolicy(UnitThresholdPolicy):
    """FastBERT: entropy / log(C) < threshold, so one threshold means the same for any C."""

    name: ClassVar[str] = "normalized_entropy"
    default_values: ClassVar[tuple[float, ...]] = NORMALIZED_THRESHOLDS
    dense_score = staticmethod(normalized_entropy)

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        assert outputs is not None
        return normalized_entropy(outputs) < self.threshold


def max_probability(logits: Tensor) -> Tensor:
    """The highest class probability of ``softmax(logits)``, in float32."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


@POLICIES.register
@dataclass
class MaxProbPolicy(UnitThresholdPolicy):
    """Leave when the highest class probability is above ``threshold``."""

    name: ClassVar[str] = "max_prob"
    default_values: ClassVar[tuple[float, ...]] = (
        1.0, 0.999, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6)
    dense_score = staticmethod(max_probability)
    leaves_below: ClassVar[bool] = False
    threshold: float = 0.9

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        assert outputs is not None
        top = torch.softmax(_at_least_float32(outputs), dim=-1).amax(dim=-1)
        return top > self.threshold


@POLICIES.register
@dataclass
class PatiencePolicy(ExitPolicy):
    """PABEE: leave once the prediction has stayed the same for ``patience`` consecutive exits.

    With ``patience=2`` an example leaves at the third exit if exits 1, 2 and 3 agree. For
    classification "the same" is the same argmax; for regression it is a change smaller than
    ``tolerance`` between consecutive outputs (PABEE's regression rule).
    """

    name: ClassVar[str] = "patience"
    classification_only: ClassVar[bool] = False
    sweep_parameter: ClassVar[str] = "patience"
    patience: int = 3
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        self.patience = _count("patience", self.patience)
        self.tolerance = _threshold("tolerance", self.tolerance)

    def default_sweep(self, num_layers: int) -> list[float]:
        return [float(p) for p in range(num_layers - 1, 0, -1)]

    @classmethod
    def dense_family(cls, params: Mapping[str, Any] | None = None, *, regression: bool
                     ) -> DenseFamily | None:
        """Classification: every patience 1..L-1, the other parameters as the recipe set
        them; regression: ``tolerance`` swept at the recipe's patience (else 1)."""
        params = dict(params or {})
        if regression:
            return cls.tolerance_family(int(params.get("patience", 1)))
        fixed = {k: v for k, v in params.items() if k != "patience"}
        return DenseFamily(cls(**fixed), fixed, "patience")

    @classmethod
    def tolerance_family(cls, patience: int) -> DenseFamily:
        """PABEE's regression rule with ``tolerance`` swept: an example leaves at exit l when
        the last ``patience`` changes |y_l - y_(l-1)| are all below it, so the score at l is
        the largest of those changes and the values are its running minima."""
        return DenseFamily(cls(patience=patience), {"patience": patience}, "tolerance",
                           score=lambda logits: patience_scores(logits, patience))

    def start(self, num_rows: int, device: torch.device) -> PolicyState:
        return {"streak": torch.zeros(num_rows, dtype=torch.long, device=device)}

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        assert outputs is not None
        outputs = _at_least_float32(outputs)
        current = outputs[:, 0] if outputs.shape[-1] == 1 else outputs.argmax(dim=-1)
        previous = state.get("previous")
        if previous is None:
            same = torch.zeros_like(state["streak"], dtype=torch.bool)
        elif outputs.shape[-1] == 1:
            same = (current - previous).abs() < self.tolerance
        else:
            same = current == previous
        state["streak"] = torch.where(same, state["streak"] + 1, torch.zeros_like(state["streak"]))
        state["previous"] = current
        return state["streak"] >= self.patience


def patience_scores(all_logits: Tensor, patience: int) -> Tensor:
    """Regression: at exit l, the largest of the last ``patience`` changes |y_l - y_(l-1)|
    (inf where fewer than ``patience`` changes exist yet): it leaves when that is < tolerance.
    ``[L, N, 1]`` -> ``[L-1, N]``."""
    outputs = all_logits[..., 0].float()
    changes = (outputs[1:] - outputs[:-1]).abs()  # change at exit l is row l-1
    num_layers = all_logits.shape[0]
    scores = torch.full((num_layers - 1, outputs.shape[1]), float("inf"))
    for layer in range(patience, num_layers - 1):
        scores[layer] = changes[layer - patience:layer].amax(dim=0)
    return scores


@POLICIES.register
@dataclass
class ConfidenceWindowPolicy(UnitThresholdPolicy):
    """ELBERT's two-stage rule, for any number of classes and any batch.

    Leave when the normalized entropy is below ``threshold``; otherwise leave when the last
    ``window`` exits (this one included) all predict the same class with a margin: its
    probability exceeds the runner-up's by more than ``2 * margin``. For two classes that is
    exactly ELBERT's "p > 0.5 + margin (or < 0.5 - margin) at each of the last N exits".
    """

    name: ClassVar[str] = "confidence_window"
    default_values: ClassVar[tuple[float, ...]] = NORMALIZED_THRESHOLDS
    dense_score = staticmethod(normalized_entropy)
    window: int = 2
    margin: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = _count("window", self.window)
        self.margin = _threshold("margin", self.margin, upper=0.5)

    def start(self, num_rows: int, device: torch.device) -> PolicyState:
        return {"streak": torch.zeros(num_rows, dtype=torch.long, device=device),
                "previous": torch.full((num_rows,), -1, dtype=torch.long, device=device)}

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        assert outputs is not None
        probs = torch.softmax(_at_least_float32(outputs), dim=-1)
        top2 = probs.topk(2, dim=-1)
        predicted = top2.indices[:, 0]
        confident = (top2.values[:, 0] - top2.values[:, 1]) > 2 * self.margin
        continues = confident & (predicted == state["previous"])
        streak = torch.where(continues, state["streak"] + 1, confident.long())
        state["streak"] = streak
        state["previous"] = torch.where(confident, predicted, torch.full_like(predicted, -1))
        low_entropy = _entropy_of(probs) / math.log(probs.shape[-1]) < self.threshold
        return low_entropy | (streak >= self.window)


@POLICIES.register
@dataclass
class FixedPolicy(ExitPolicy):
    """Every example leaves after ``layer`` layers (1-based): per-exit evaluation and timing."""

    name: ClassVar[str] = "fixed"
    classification_only: ClassVar[bool] = False
    sweep_parameter: ClassVar[str] = "layer"
    layer: int = 1

    def __post_init__(self) -> None:
        self.layer = _count("layer", self.layer)

    def needs_outputs(self, layer: int) -> bool:
        return layer == self.layer - 1

    @classmethod
    def dense_family(cls, params: Mapping[str, Any] | None = None, *, regression: bool
                     ) -> DenseFamily:
        """Every layer L..1, for classification and regression alike."""
        return DenseFamily(cls(), {}, "layer")

    def check_model(self, num_outputs: int, num_layers: int) -> None:
        if self.layer > num_layers:
            raise ConfigError(f"layer={self.layer} is out of range; allowed: 1..{num_layers}")

    def start(self, num_rows: int, device: torch.device) -> PolicyState:
        # Carries the row count through the layers whose head is skipped.
        return {"rows": torch.zeros(num_rows, dtype=torch.bool, device=device)}

    def decide(self, layer: int, outputs: Tensor | None, state: PolicyState) -> Tensor:
        return torch.full_like(state["rows"], layer == self.layer - 1)
