"""Checks of a multi-exit GLUE recipe that must pass before the first training step.

Evaluation runs after training; a sweep value or exit policy it cannot use must not cost the
training. `check_evaluation_settings` builds the recipe's policy once (an `ExitPolicySetting`,
which the validated config keeps for the run) and every policy of the sweep from the recipe
alone (validation time); `check_against_model` adds what needs the model: its depth (e.g.
`fixed` with `layer: 99`), its outputs (regression vs classes) and its position embeddings.

`EVALUATION_KEYS` are the keys that only change evaluation: `--resume` accepts new values for
them, so a finished run's last checkpoint can be re-evaluated without training again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradsurg.errors import ConfigError
from gradsurg.multiexit.backbones import check_max_length
from gradsurg.multiexit.evaluation.sweeps import sweep_rules
from gradsurg.multiexit.policies import POLICIES, ExitPolicy

__all__ = ["EVALUATION_KEYS", "ExitPolicySetting", "check_against_model",
           "check_evaluation_settings", "resolve_exit_policy"]

EVALUATION_KEYS = frozenset({"exit_policy", "sweep", "eval_rows", "eval_batch_size",
                             "eval_split", "save_model"})


def check_evaluation_settings(exit_policy: str | Mapping[str, Any],
                              sweep: Sequence[float] | None) -> ExitPolicySetting:
    """The recipe's exit policy, built once, with every policy of its sweep built from the
    recipe alone (no model needed)."""
    setting = resolve_exit_policy(exit_policy, sweep)
    setting.sweep_policies()
    return setting


@dataclass(frozen=True)
class ExitPolicySetting:
    """The recipe's exit policy resolved once: the built rule, the parameters the recipe set
    (what the dense sweep keeps and results.json reports) and the sweep values (None: the
    rule's default sweep)."""

    rule: ExitPolicy
    params: Mapping[str, Any]
    sweep: list[float] | None

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def cls(self) -> type[ExitPolicy]:
        return type(self.rule)

    def sweep_values(self, num_layers: int) -> list[float]:
        """The values the sweep tries on a model with `num_layers` exits."""
        return list(self.sweep) if self.sweep is not None else self.rule.default_sweep(num_layers)

    def sweep_policies(self, *, num_layers: int | None = None) -> list[ExitPolicy]:
        """The policy at each value of the sweep (`sweep_values`), built now (none for the
        default sweep until the model's depth is known); errors name the key and the value."""
        swept = self.rule.sweep_parameter
        if self.sweep is not None and not self.sweep:
            raise ConfigError("key 'sweep': an empty list sweeps nothing; give values of "
                              f"{self.name}'s {swept or 'parameter'}, or null for the default "
                              "list")
        if self.sweep is not None:
            values = self.sweep
        elif num_layers is None:
            return []
        else:
            values = self.rule.default_sweep(num_layers)
        try:
            return sweep_rules(self.rule, values)
        except ConfigError as error:
            raise ConfigError(f"key 'sweep': {error}") from None


def resolve_exit_policy(exit_policy: str | Mapping[str, Any],
                        sweep: Sequence[float] | None) -> ExitPolicySetting:
    """The recipe's `exit_policy` and `sweep` keys as one resolved setting: the name is looked
    up and the rule built here, once."""
    _, params = POLICIES.split(exit_policy, where="key 'exit_policy'")
    rule: ExitPolicy = POLICIES.build(exit_policy, where="key 'exit_policy'")
    return ExitPolicySetting(rule, params, None if sweep is None else list(sweep))


def check_against_model(config: Any, policy: ExitPolicySetting, *, num_layers: int,
                        num_outputs: int, hf_config: Any) -> list[ExitPolicy]:
    """What the recipe asks of this model: sweep policies that fit it, a max_length it holds,
    exits for gradient equilibrium to balance.
    Returns the sweep's policies, built and checked (the run's evaluation uses them); none
    when the run makes no sweep."""
    check_max_length(config.max_length, hf_config, model=f"model {config.model!r}")
    if config.gradient_equilibrium and num_layers < 2:
        raise ConfigError(f"key 'gradient_equilibrium': model {config.model!r} has one layer "
                          "and so one exit, whose gradient equilibrium leaves unchanged; "
                          "remove the key")
    if num_outputs < 2 and policy.cls.classification_only:
        return []  # the run skips the sweep for a regression task (see evaluation.py)
    rules = policy.sweep_policies(num_layers=num_layers)
    for built in rules:
        try:
            built.check_model(num_outputs, num_layers)
        except ConfigError as error:
            raise ConfigError(f"key 'sweep' / 'exit_policy': {error}") from None
    return rules
