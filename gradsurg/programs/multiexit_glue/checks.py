"""Checks of a multi-exit GLUE recipe that must pass before the first training step.

Evaluation runs after training; a sweep value or exit policy it cannot use must not cost the
training. `check_evaluation_settings` builds every policy of the sweep from the recipe alone
(validation time); `check_against_model` adds what needs the model: its depth (e.g. `fixed`
with `layer: 99`), its outputs (regression vs classes) and its position embeddings.

`EVALUATION_KEYS` are the keys that only change evaluation: `--resume` accepts new values for
them, so a finished run's last checkpoint can be re-evaluated without training again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradsurg.errors import ConfigError
from gradsurg.multiexit.backbones import check_max_length
from gradsurg.multiexit.evaluation.sweeps import default_sweep, sweep_rules
from gradsurg.multiexit.policies import POLICIES, ExitPolicy

__all__ = ["EVALUATION_KEYS", "ExitPolicySetting", "check_against_model",
           "check_evaluation_settings", "resolve_exit_policy"]

EVALUATION_KEYS = frozenset({"exit_policy", "sweep", "eval_rows", "eval_batch_size",
                             "eval_split", "save_model"})


def sweep_policies(name: str, params: Mapping[str, Any], sweep: Sequence[float] | None, *,
                   num_layers: int | None = None) -> list[ExitPolicy]:
    """Every policy the sweep will use, built now; errors name the key and the value."""
    policy_cls = POLICIES.get(name)
    swept = policy_cls.sweep_parameter
    if sweep is not None and not sweep:
        raise ConfigError("key 'sweep': an empty list sweeps nothing; give values of "
                          f"{name}'s {swept or 'parameter'}, or null for the default list")
    if sweep is None:
        if num_layers is None:
            return []
        sweep = default_sweep(name, num_layers)
    rule = POLICIES.build({"name": name, **params}, where="key 'exit_policy'")
    if swept is None:
        return [rule]
    try:
        return sweep_rules(rule, sweep)
    except ConfigError as error:
        raise ConfigError(f"key 'sweep': {error}") from None


def check_evaluation_settings(exit_policy: str | Mapping[str, Any],
                              sweep: Sequence[float] | None) -> None:
    """Build the sweep's policies from the recipe alone (no model needed)."""
    name, params = POLICIES.split(exit_policy, where="key 'exit_policy'")
    sweep_policies(name, params, sweep)


@dataclass(frozen=True)
class ExitPolicySetting:
    """The recipe's exit policy resolved once: its class, fixed parameters and sweep values
    (None: the policy's standard list)."""

    name: str
    params: Mapping[str, Any]
    cls: type[ExitPolicy]
    sweep: list[float] | None


def resolve_exit_policy(exit_policy: str | Mapping[str, Any],
                        sweep: Sequence[float] | None) -> ExitPolicySetting:
    """The recipe's `exit_policy` and `sweep` keys as one resolved setting."""
    name, params = POLICIES.split(exit_policy, where="key 'exit_policy'")
    return ExitPolicySetting(name, params, POLICIES.get(name),
                             None if sweep is None else list(sweep))


def check_against_model(config: Any, policy: ExitPolicySetting, *, num_layers: int,
                        num_outputs: int, hf_config: Any) -> None:
    """What the recipe asks of this model: sweep policies that fit it, a max_length it holds."""
    check_max_length(config.max_length, hf_config, model=f"model {config.model!r}")
    if num_outputs < 2 and policy.cls.classification_only:
        return  # the run skips the sweep for a regression task (see evaluation.py)
    for built in sweep_policies(policy.name, policy.params, policy.sweep,
                                num_layers=num_layers):
        try:
            built.check_model(num_outputs, num_layers)
        except ConfigError as error:
            raise ConfigError(f"key 'sweep' / 'exit_policy': {error}") from None
