"""The `digits_multiexit` program: RomeBERT's loss groups and combiners on a non-BERT model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from sklearn.datasets import load_digits
from torch import Tensor

from gradsurg import strict_json
from gradsurg.combiners import COMBINERS
from gradsurg.distributed import DataParallel
from gradsurg.errors import ConfigError
from gradsurg.loss_groups import LossGroup
from gradsurg.multiexit.losses.functions import (
    exit_cross_entropy,
    exit_distillation_loss,
    self_distillation_loss,
)
from gradsurg.optimizers import (
    OptimizerSettings,
    build_optimizer,
    buildable_optimizer,
    refuse_moved_keys,
)
from gradsurg.outputs import atomic_write_bytes, atomic_write_text
from gradsurg.programs import Program, ProgramConfig
from gradsurg.programs.training import (
    StageProgress,
    check_trained,
    epoch_steps,
    trained_parameters,
    weights_digest,
)
from gradsurg.surgery import Surgery
from gradsurg.weightings import WEIGHTINGS
from gradsurg_digits.model import MultiExitMLP, exit_accuracies


class DigitsConfig(ProgramConfig):
    """Recipe keys of `digits_multiexit`."""

    seed: int = 0
    hidden: int = Field(64, ge=1)
    layers: int = Field(4, ge=2)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    # torch's AdamW defaults: weight decay 0.01 (what this program trained with before the key)
    optimizer: OptimizerSettings = Field(
        OptimizerSettings(lr=3e-3, weight_decay=0.01),
        description="{name, lr, weight_decay, ...}; default: AdamW, lr 3e-3, weight decay 0.01")
    test_fraction: float = Field(0.25, gt=0, lt=1)
    gamma: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(1.0, gt=0)
    combiner: str | dict[str, Any] = "sum"
    include: list[str] | None = None
    exclude: list[str] | None = None
    max_grad_norm: float | None = Field(None, gt=0)
    weighting: str | dict[str, Any] | None = Field(
        None, description="a loss weighting of the groups final and sd (a name or {name, "
        "...options}), applied before the combiner")
    exit_groups: bool = Field(
        False, description="one loss group per exit, exit1..exitL (L = layers): exitL the last "
        "exit's CE, each earlier exit its share of sd; replaces final and sd")
    gradient_equilibrium: bool = Field(
        False, description="gradient equilibrium (Li et al., ICCV 2019): each layer's "
        "parameters get the mean of the gradients of the exits reaching them, not their sum")

    _moved_keys = model_validator(mode="before")(refuse_moved_keys)

    @field_validator("optimizer")
    @classmethod
    def _buildable_optimizer(cls, value: OptimizerSettings) -> OptimizerSettings:
        return buildable_optimizer(value)

    @model_validator(mode="after")
    def _weighting_and_combiner_fit_the_groups(self) -> DigitsConfig:
        groups = group_names(self)
        if self.weighting is not None:
            try:
                WEIGHTINGS.build(self.weighting, groups, where="key 'weighting'")
            except ConfigError as error:
                raise ValueError(str(error)) from None
        try:
            named = COMBINERS.build(self.combiner, where="key 'combiner'").group_names()
        except ConfigError as error:
            raise ValueError(str(error)) from None
        unknown = [g for g in named if g not in groups]
        if unknown:
            raise ValueError(f"key 'combiner': loss group {unknown[0]!r} does not exist; "
                             f"allowed: {', '.join(groups)}")
        return self


GROUPS = ("final", "sd")


def group_names(config: DigitsConfig) -> list[str]:
    """`final` and `sd`, or with `exit_groups` one group per exit, exit1..exitL."""
    if config.exit_groups:
        return [f"exit{i}" for i in range(1, config.layers + 1)]
    return list(GROUPS)


def digits_split(seed: int, test_fraction: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's 1,797 digits, scaled to [0, 1], split by a seeded permutation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(len(y) * (1 - test_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def loss_groups(config: DigitsConfig) -> list[LossGroup]:
    """`final`: the last exit's CE; `sd`: self-distillation of the other exits from it; or,
    with `exit_groups`, `exitL` (= final) and each earlier exit's share of `sd`."""

    def final_ce(logits: list[Tensor], labels: Tensor) -> Tensor:
        return exit_cross_entropy(logits[-1], labels)

    def distillation(logits: list[Tensor], labels: Tensor) -> Tensor:
        return self_distillation_loss(
            logits, labels, gamma=config.gamma, temperature=config.temperature
        )

    def share(exit_index: int):
        def exit_share(logits: list[Tensor], labels: Tensor) -> Tensor:
            return exit_distillation_loss(logits[exit_index], logits[-1], labels,
                                          gamma=config.gamma, temperature=config.temperature)
        return exit_share

    if config.exit_groups:  # the early exits' shares sum to `sd` (the teacher is detached)
        return [*(LossGroup(f"exit{i + 1}", {"sd": share(i)}) for i in range(config.layers - 1)),
                LossGroup(f"exit{config.layers}", {"ce": final_ce})]
    return [LossGroup("final", {"ce": final_ce}), LossGroup("sd", {"sd": distillation})]


def train(config: DigitsConfig, output_dir: Path | None = None) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    x_train, y_train, x_test, y_test = digits_split(config.seed, config.test_fraction)
    model = MultiExitMLP(inputs=x_train.shape[1], hidden=config.hidden, layers=config.layers,
                         classes=10, gradient_equilibrium=config.gradient_equilibrium)
    parallel = DataParallel.from_environment()  # torchrun: each rank a share of every batch
    weighting = None
    if config.weighting is not None:  # a training part: its learned weights join the optimizer
        weighting = WEIGHTINGS.build(config.weighting, group_names(config),
                                     where="key 'weighting'")
        parallel.broadcast_module_(weighting)
    parallel.broadcast_module_(model)
    learned = list(weighting.parameters()) if weighting is not None else []
    optimizer = build_optimizer(config.optimizer, [*model.parameters(), *learned])
    combiner = COMBINERS.build(config.combiner, where="key 'combiner'")
    surgery = Surgery(model, optimizer, combiner, include=config.include,
                      exclude=config.exclude, max_grad_norm=config.max_grad_norm,
                      data_parallel=parallel, weighting=weighting)
    groups = loss_groups(config)
    # sdmgrad, modo: that many consecutive batches per optimizer step (a b-th of the steps)
    per_step = combiner.batches_per_step
    batch_starts = range(0, len(y_train), config.batch_size)
    epoch_steps(len(batch_starts), per_step, combiner=combiner.name)  # enough batches: or refused
    trained = trained_parameters(model, surgery)
    progress = StageProgress(start_digest=weights_digest(trained))
    generator = torch.Generator().manual_seed(config.seed)
    log_lines, fired = [], []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for first in range(0, len(batch_starts) - per_step + 1, per_step):
            drawn = [parallel.shard(order[start : start + config.batch_size].tolist())
                     for start in batch_starts[first : first + per_step]]
            batch_losses = []
            for rows, _ in drawn:
                logits = model(x_train[rows])
                batch_losses.append({group.name: group(logits, y_train[rows])
                                     for group in groups})
            if per_step == 1:
                rows, share = drawn[0]
                surgery.backward(batch_losses[0], share=share, recompute=lambda rows=rows: {
                    g.name: g(model(x_train[rows]), y_train[rows]) for g in groups})
            else:
                shares = [share for _, share in drawn]
                surgery.backward(batch_losses, share=None if shares[0] is None else shares)
            optimizer.step()  # the weighting (if any) updates here, unless the step was skipped
            optimizer.zero_grad()
            fired.append(surgery.diagnostics.get("project/fired", 0.0))
        weights = {k: v for k, v in surgery.log_values().items()  # raw losses, weights
                   if weighting is not None and not k.startswith("weighted_")}
        surgery.epoch_end()
        log_lines.append({"epoch": epoch + 1, **surgery.losses, **surgery.diagnostics,
                          **weights})
    progress.step = surgery.steps
    check_trained("train", progress, surgery, trained)  # nothing trained: an error, no model
    accuracies = exit_accuracies(model, x_test, y_test)
    results = {
        "program": "digits_multiexit",
        "combiner": combiner.name,
        "selected_parameters": surgery.selected_names,
        "exit_accuracy": accuracies,
        "projection_fired_fraction": sum(fired) / len(fired),
        "steps": surgery.steps,
    }
    if weighting is not None:
        results["weighting"] = {"name": weighting.name, **weighting.describe()}
    parallel.close()
    if output_dir is not None and parallel.is_main:
        # gradsurg's one atomic path: a temporary name, then a rename (never through a link)
        atomic_write_text(output_dir / "train_log.jsonl",
                          "".join(strict_json.dumps(line) + "\n" for line in log_lines), own=True)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write_bytes(output_dir / "model.pt", buffer.getvalue())
    return results


def run(config: DigitsConfig, output_dir: Path) -> dict[str, Any]:
    results = train(config, output_dir)
    for index, accuracy in enumerate(results["exit_accuracy"], start=1):
        print(f"exit {index}: test accuracy {accuracy:.3f}")
    return results


PROGRAM = Program(
    name="digits_multiexit",
    config=DigitsConfig,
    run=run,
    summary="multi-exit MLP on scikit-learn digits with gradsurg loss groups and combiners",
    resumable=False,  # no checkpoints: `gradsurg run --resume` is refused for it
)
