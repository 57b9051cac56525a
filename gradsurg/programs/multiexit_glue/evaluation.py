"""Evaluation of a trained multi-exit model: every exit's dev outputs, per-exit metrics, the
exit-policy sweeps, their tables and the paper-style plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor
from torch.utils.data import DataLoader

from gradsurg.data.glue import TaskSpec
from gradsurg.devices import to_device
from gradsurg.metrics import primary_metric
from gradsurg.multiexit.evaluation.dense_sweeps import dense_sweep
from gradsurg.multiexit.evaluation.sweeps import per_exit_metrics, sweep_points
from gradsurg.multiexit.evaluation.tradeoff_summary import summarize
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import ExitPolicy
from gradsurg.outputs import check_own_folder
from gradsurg.programs.multiexit_glue.checks import ExitPolicySetting
from gradsurg.programs.multiexit_glue.data import forward
from gradsurg.programs.training import progress_bar
from gradsurg.report.plots import plot_exit_distribution, plot_exit_metrics, plot_tradeoff
from gradsurg.report.tables import exit_metrics_table, sweep_table, tradeoff_table
from gradsurg.run_folder import write_exit_logits

console = Console()

@torch.no_grad()
def collect_exit_logits(model: MultiExitModel, loader: DataLoader, device: torch.device
                        ) -> tuple[Tensor, Tensor]:
    """All exits' logits on a split, `[layers, examples, labels]`, and the labels."""
    model.eval()
    outputs, labels = [], []
    with progress_bar() as progress:
        bar = progress.add_task("evaluate", total=len(loader), status="", rate="")
        for batch in loader:
            batch = to_device(batch, device)
            outputs.append(torch.stack(forward(model, batch)).float().cpu())
            labels.append(batch["labels"].cpu())
            progress.update(bar, advance=1)
    return torch.cat(outputs, dim=1), torch.cat(labels)


def save_exit_logits(all_logits: Tensor, labels: Tensor, output_dir: Path) -> None:
    """Every exit's evaluation outputs: `gradsurg compare` and later sweeps read them instead
    of re-running the model (`gradsurg.run_folder.EXIT_LOGITS_FILE`), written atomically."""
    write_exit_logits(output_dir, all_logits, labels)


def evaluation_results(all_logits: Tensor, labels: Tensor, *, task: TaskSpec, mode: str,
                       model: str, split: str, rows: int | None, policy: ExitPolicySetting,
                       sweep_policies: Sequence[ExitPolicy], output_dir: Path) -> dict[str, Any]:
    """Per-exit metrics, the exit-policy sweep (`sweep_policies`: the policy at each of
    `policy.sweep_values`, built before training), their tables and the paper-style plots."""
    primary = primary_metric(task)
    per_exit = per_exit_metrics(all_logits, labels, task)
    console.print(exit_metrics_table(per_exit, title=f"{task.name} {split}, per exit"))
    results: dict[str, Any] = {
        "program": "multiexit_glue", "mode": mode, "task": task.name,
        "model": model, "primary_metric": primary, "exit_metrics": per_exit,
        "eval_split": split, "eval_rows": rows,
        "num_eval_examples": int(all_logits.shape[1]),
    }
    plots = check_own_folder(output_dir / "plots")  # a link there is refused
    plot_exit_metrics({mode: [m[primary] for m in per_exit]}, primary,
                      plots / "metric_per_exit.png")
    results.update(tradeoff_results(all_logits, labels, task, mode=mode, split=split,
                                    policy=policy, per_exit=per_exit, plots=plots))
    if task.is_regression and policy.cls.classification_only:
        return results  # e.g. entropy: undefined for a single regression output
    sweep = sweep_points(all_logits, labels, task, sweep_policies,
                         policy.sweep_values(all_logits.shape[0]))
    swept = policy.cls.sweep_parameter or "value"
    console.print(sweep_table(sweep, primary, parameter=swept, title=(
        f"{task.name} {split}, early exit by {policy.name}")))
    results["exit_policy"] = {"name": policy.name, **policy.params}
    results["sweep"] = [
        {swept: p.value, **p.metric, "time_percent": p.time_percent, "exit_counts": p.exit_counts}
        for p in sweep
    ]
    plot_tradeoff({mode: [(p.time_percent, p.metric[primary]) for p in sweep]}, primary,
                  plots / "metric_vs_time.png")
    middle = sweep[len(sweep) // 2]
    plot_exit_distribution(middle.exit_counts, plots / "exit_layers.png",
                           title=f"exit layers at {policy.name} {swept}={middle.value:g}")
    return results


def tradeoff_results(all_logits: Tensor, labels: Tensor, task: TaskSpec, *, mode: str,
                     split: str, policy: ExitPolicySetting, per_exit: list[dict[str, float]],
                     plots: Path) -> dict[str, Any]:
    """The dense sweep of the recipe's exit policy (thresholds from the model's own outputs;
    regression: patience with swept tolerance) and its summary numbers, for results.json."""
    primary = primary_metric(task)
    dense = dense_sweep(all_logits, labels, task, policy.cls, dict(policy.params))
    if dense is None:  # a plugin's policy without a dense family: its fixed list is all
        console.print(f"exit policy {policy.name!r} defines no dense sweep (its class's "
                      "dense_family is None): no dense_sweep or tradeoff in results.json, only "
                      "the fixed sweep")
        return {}
    points = [(p.time_percent, p.metric[primary]) for p in dense.points]
    summary = summarize(points, [m[primary] for m in per_exit], primary)
    console.print(tradeoff_table({mode: summary}, title=(
        f"{task.name} {split}, {dense.policy} {dense.parameter} swept over "
        f"{len(points)} values from the model's outputs")))
    plot_tradeoff({f"{mode} ({dense.policy})": points}, primary,
                  plots / "metric_vs_time_dense.png")
    return {"dense_sweep": dense.to_json(), "tradeoff": summary.to_json()}
