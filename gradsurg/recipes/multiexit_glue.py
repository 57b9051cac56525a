"""The `multiexit_glue` program: RomeBERT and its baselines on GLUE.

Modes (the RomeBERT paper's Table 1 rows, then PABEE and ELBERT):
- romebert     one stage; groups `final` (last exit's task loss) and `sd` (self-distillation of
               the other exits); combiner `project`: final projected off sd on conflict (GR).
- romebert_sd  the same groups, combiner `sum` (the SD-only ablation).
- deebert      stage 1 trains backbone + final exit on the final loss; stage 2 freezes them
               and trains the other exits on the sum of their task losses.
- deebert_sd   stage 2 uses the SD loss instead (the paper's FastBERT stand-in).
- pabee        one stage, one group: the exits' losses averaged with weights ~ depth.
- elbert       one exit module shared by every layer; one group: the exits' losses under
               trainable weights (sigmoid, the final exit's weight M minus the others).
Each group's loss is a registered loss term (`gradsurg.multiexit.exit_losses`); one-stage
modes take other groups from the recipe's `loss_groups`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader

from gradsurg.checkpoint import Checkpoints, capture_rng, restore_rng
from gradsurg.combiners import build_combiner
from gradsurg.config import first_changed_key
from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import TaskSpec, get_task, load_glue
from gradsurg.devices import resolve_device
from gradsurg.distributed import DataParallel
from gradsurg.errors import ConfigError
from gradsurg.finite_weights import check_finite_outputs, check_finite_weights
from gradsurg.loggers import Loggers, open_loggers
from gradsurg.metrics import primary_metric
from gradsurg.multiexit.early_exit import per_exit_metrics, policy_sweep
from gradsurg.multiexit.exit_losses import ExitLossTerm, build_loss_term
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import POLICIES
from gradsurg.multiexit.tradeoff import dense_sweep
from gradsurg.multiexit.tradeoff_summary import summarize
from gradsurg.optimizers import build_optimizer, build_scheduler
from gradsurg.outputs import replace_folder
from gradsurg.precision import LossScale, autocast_factory
from gradsurg.programs import Program
from gradsurg.recipes.glue_checks import EVALUATION_KEYS, check_against_model
from gradsurg.recipes.glue_config import DEFAULT_GROUPS, TWO_STAGE_MODES, MultiExitGlueConfig
from gradsurg.recipes.training import (
    StageProgress,
    StageResult,
    progress_bar,
    stage_steps,
    train_stage,
)
from gradsurg.report.plots import plot_exit_distribution, plot_exit_metrics, plot_tradeoff
from gradsurg.report.tables import exit_metrics_table, sweep_table, tradeoff_table
from gradsurg.surgery import Surgery
from gradsurg.weightings import LossWeighting, build_weighting

console = Console()

#: A run folder's file with every exit's evaluation logits `[L, N, C]` and the labels `[N]`.
EXIT_LOGITS_FILE = "exit_logits.safetensors"


TermSpec = str | dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One optimization stage: which exits train, and the loss groups (name -> loss term)
    that drive them."""

    name: str
    groups: dict[str, TermSpec]
    train_encoder: bool
    trained_exits: str  # "all", "final" or "early"


def plan_stages(mode: str, groups: Mapping[str, TermSpec] | None = None) -> list[Stage]:
    """The mode's stages; `groups` (a recipe's `loss_groups`) replaces a one-stage mode's."""
    if mode not in TWO_STAGE_MODES:
        joint = dict(groups if groups is not None else DEFAULT_GROUPS[mode])
        return [Stage("joint", joint, train_encoder=True, trained_exits="all")]
    second = {"exits": "early_task_sum"} if mode == "deebert" else {"sd": "self_distillation"}
    return [
        Stage("stage1", {"final": "final_task"}, train_encoder=True, trained_exits="final"),
        Stage("stage2", second, train_encoder=False, trained_exits="early"),
    ]


def check_combiner_groups(config: MultiExitGlueConfig, stages: list[Stage]) -> None:
    """Every group the recipe's combiner names exists in the stages it combines (per-exit
    groups are only known once the model's depth is), checked before any training."""
    if config.combiner is None:
        return
    for stage in stages:
        missing = [g for g in build_combiner(config.combiner).group_names()
                   if g not in stage.groups]
        if len(stage.groups) > 1 and missing:
            raise ConfigError(f"key 'combiner': loss group {missing[0]!r} does not exist in "
                              f"this model's stage {stage.name}; allowed: "
                              f"{', '.join(stage.groups)}")


def build_stage_terms(stage: Stage, num_exits: int, config: MultiExitGlueConfig
                      ) -> torch.nn.ModuleDict:
    """The stage's loss terms; self-distillation takes the recipe's `gamma`/`temperature`
    unless its own spec sets them."""
    terms = {}
    for group, spec in stage.groups.items():
        name = spec.get("name") if isinstance(spec, Mapping) else spec
        if name in ("self_distillation", "exit_self_distillation"):
            spec = {"gamma": config.gamma, "temperature": config.temperature,
                    **({"name": spec} if isinstance(spec, str) else spec)}
        terms[group] = build_loss_term(spec, num_exits, where=f"loss group {group!r}")
    return torch.nn.ModuleDict(terms)


def group_losses(logits: list[Tensor], labels: Tensor, terms: Mapping[str, ExitLossTerm]
                 ) -> dict[str, Tensor]:
    """Each loss group's value on one batch."""
    return {group: term(logits, labels) for group, term in terms.items()}


def attach_loss_terms(model: MultiExitModel, stages: list[Stage], config: MultiExitGlueConfig
                      ) -> torch.nn.ModuleDict:
    """Every stage's loss terms, attached to the model as `model.loss_terms[stage]` for the
    run: a term that learns (ELBERT's weights) is then trained, clipped, all-reduced and
    checkpointed with the model's own parameters. `run` removes them before the model is
    evaluated and saved for inference."""
    terms = torch.nn.ModuleDict(
        {stage.name: build_stage_terms(stage, model.num_exits, config) for stage in stages})
    model.loss_terms = terms.to(next(model.parameters()).device)
    return terms


def attach_weighting(model: MultiExitModel, stages: list[Stage], config: MultiExitGlueConfig
                     ) -> LossWeighting | None:
    """The recipe's loss weighting over the (single) stage's groups, attached to the model as
    `model.loss_weighting` like the loss terms: learned weights are trained by the same
    optimizer, and every weighting's state goes into the checkpoints with the weights. `run`
    removes it before the model is evaluated and saved."""
    if config.weighting is None:
        return None
    (stage,) = stages  # validation allows weightings on one-stage modes only
    weighting = build_weighting(config.weighting, list(stage.groups))
    model.loss_weighting = weighting.to(next(model.parameters()).device)
    return weighting


def start_at_label_mean(model: MultiExitModel, labels: Any) -> None:
    """Regression exits start by predicting the training labels' mean, not 0.

    From a zero start every exit's first gradients mostly say "add the mean" (about 2.7 on
    STS-B's 0-5 scale); with six exits trained jointly that push went into the shared
    encoder, which collapsed to a constant prediction (Pearson < 13 at every exit in the
    reproduction) while a single trained exit survived it. Starting at the mean removes it.
    """
    mean = float(torch.as_tensor(list(labels), dtype=torch.float64).mean())
    with torch.no_grad():
        for head in model.exits:
            head.classifier.bias.fill_(mean)


def set_trainable(model: MultiExitModel, stage: Stage) -> list[torch.nn.Parameter]:
    model.encoder.requires_grad_(stage.train_encoder)
    for name, terms in model.loss_terms.items():
        terms.requires_grad_(name == stage.name)
    last = model.num_exits - 1
    for index, exit_head in enumerate(model.exits):
        wanted = (
            stage.trained_exits == "all"
            or (stage.trained_exits == "final" and index == last)
            or (stage.trained_exits == "early" and index < last)
        )
        exit_head.requires_grad_(wanted)
    return [p for p in model.parameters() if p.requires_grad]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)


def epoch_order(size: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The training batches of one epoch as row indices: a function of (seed, epoch) only,
    so a resumed run can start at any batch and see what the uninterrupted run saw."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, size, batch_size)]


def load_split(task: TaskSpec, split: str, config: MultiExitGlueConfig, *, rows: int | None,
               shuffle_seed: int | None) -> Any:
    """One split; `rows` with a seed takes a seeded random subset (train), else the first rows."""
    if shuffle_seed is None or rows is None:
        return load_glue(task, split, data_dir=config.data_dir, max_rows=rows)
    data = load_glue(task, split, data_dir=config.data_dir)
    if rows >= len(data):
        return data
    return data.shuffle(seed=shuffle_seed).select(range(rows))


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def forward(model: MultiExitModel, batch: Mapping[str, Tensor]) -> list[Tensor]:
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


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


def run(config: MultiExitGlueConfig, output_dir: Path, *, resume: bool = False
        ) -> dict[str, Any]:
    """Train every stage of the mode, evaluate, write the outputs into `output_dir`.

    Checkpoints go to `output_dir/checkpoints` (every `checkpoint_every` steps and after each
    epoch); `resume=True` continues from the latest one, bit for bit on a deterministic CPU.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed, deterministic=config.deterministic)
    parallel = DataParallel.from_environment()
    device = resolve_device(config.device, local_rank=parallel.local_rank)
    autocast = autocast_factory(config.precision, device)  # fp16 on a CPU fails here, early
    task = get_task(config.task)
    model, tokenizer = MultiExitModel.from_backbone(
        config.model, num_labels=task.num_labels, pooling=config.pooling, dropout=config.dropout,
        backbone_dropout=config.backbone_dropout, shared_exit=config.mode == "elbert",
    )
    # Recorded in the checkpoint so `gradsurg predict/eval` know the classes and the task.
    model.config = dataclasses.replace(
        model.config, task=task.name, labels=list(task.labels) if task.labels else None)
    check_against_model(config, num_layers=model.num_exits, num_outputs=task.num_labels,
                        hf_config=model.encoder.hf_config)  # before any step, not after
    model.to(device)
    one_stage = config.mode not in TWO_STAGE_MODES
    stages = plan_stages(config.mode, config.joint_groups(model.num_exits) if one_stage else None)
    check_combiner_groups(config, stages)
    loss_terms = attach_loss_terms(model, stages, config)
    weighting = attach_weighting(model, stages, config)
    parallel.broadcast_module_(model)
    checkpoints = Checkpoints(output_dir / "checkpoints", keep=config.keep_checkpoints)
    restored = load_latest(checkpoints, model, config, device, parallel) if resume else None
    collate = GlueCollator(tokenizer)
    train_data = tokenize_dataset(
        load_split(task, "train", config, rows=config.train_rows, shuffle_seed=config.seed),
        tokenizer, max_length=config.max_length,
    )
    eval_data = tokenize_dataset(
        load_split(task, config.eval_split, config, rows=config.eval_rows, shuffle_seed=None),
        tokenizer, max_length=config.max_length,
    )
    eval_loader = DataLoader(eval_data, batch_size=config.eval_batch_size, collate_fn=collate)
    if task.is_regression and restored is None:
        start_at_label_mean(model, train_data["label"])
    steps_per_epoch = -(-len(train_data) // config.batch_size)

    def batches(epoch: int, skip: int) -> Iterator[tuple[dict[str, Tensor], float]]:
        order = epoch_order(len(train_data), config.batch_size, seed=config.seed, epoch=epoch)
        shards = [parallel.shard(rows) for rows in order[skip:]]  # all of it on one process
        # Its own generator: a loader otherwise draws a seed from the global RNG, which would
        # shift the dropout masks of a run resumed mid-epoch.
        loader = DataLoader(train_data, batch_sampler=[rows for rows, _ in shards],
                            collate_fn=collate,
                            generator=torch.Generator().manual_seed(config.seed + epoch))
        for batch, (_, share) in zip(loader, shards):
            yield to_device(batch, device), share

    log = open_loggers(config.loggers, output_dir if parallel.is_main else None,
                       truncate_to=restored["log_offset"] if restored else 0)
    stage_results: list[StageResult] = [
        StageResult(**result) for result in (restored or {}).get("finished", [])]
    try:
        with progress_bar(disable=not parallel.is_main) as progress:
            for index, stage in enumerate(stages):
                if index < len(stage_results):
                    continue  # finished before the restart
                here = restored if restored and restored["stage"] == index else None
                context = StageContext(index, stage_results, checkpoints, config, parallel,
                                       autocast, here)
                stage_results.append(run_stage(stage, model, batches, steps_per_epoch, log,
                                               progress, context))
    finally:
        log.close()
    parallel.barrier()
    parallel.close()
    del model.loss_terms  # training only: not part of the saved model
    if weighting is not None:
        del model.loss_weighting
    if not parallel.is_main:  # rank 0 alone evaluates and writes the outputs
        return {}

    check_finite_weights(model, when="after training")
    all_logits, labels = collect_exit_logits(model, eval_loader, device)
    check_finite_outputs(all_logits, what=f"{config.eval_split} evaluation")
    # Every exit's evaluation outputs: `gradsurg compare` and later sweeps read them instead
    # of re-running the model.
    staging = output_dir / f".{EXIT_LOGITS_FILE}.tmp"  # renamed when complete
    try:
        save_file({"logits": all_logits.contiguous(), "labels": labels.contiguous()},
                  str(staging))
        os.replace(staging, output_dir / EXIT_LOGITS_FILE)
    finally:
        staging.unlink(missing_ok=True)
    results = evaluate(all_logits, labels, task, config, output_dir)
    results["train"] = {
        r.name: {"steps": r.steps, "seconds": round(r.seconds, 2),
                 **{k: round(v, 6) for k, v in r.means.items()}}
        for r in stage_results
    }
    learned = {f"{stage}/{group}/{key}": round(value, 6)
               for stage, terms in loss_terms.items() for group, term in terms.items()
               for key, value in term.describe().items()}
    if learned:
        results["loss_terms"] = learned  # e.g. ELBERT's exit weights after training
    if weighting is not None:
        results["weighting"] = {"name": weighting.name, **{
            key: round(value, 6) for key, value in weighting.describe().items()}}
    if config.save_model:
        replace_folder(output_dir / "model",  # a failed save leaves no half-written model/
                       lambda folder: model.save_pretrained(folder, tokenizer=tokenizer))
        results["model_dir"] = str(output_dir / "model")
    return results


def load_latest(checkpoints: Checkpoints, model: MultiExitModel, config: MultiExitGlueConfig,
                device: torch.device, parallel: DataParallel) -> dict[str, Any] | None:
    """The latest checkpoint's state (weights loaded into `model`), or None to start fresh.

    A checkpoint written under a different recipe is refused: continuing it would silently
    train a run that matches neither recipe.
    """
    latest = checkpoints.latest()
    if latest is None:
        console.print(f"no checkpoint in {checkpoints.root}: starting from step 0")
        return None
    state = checkpoints.load(latest, model=model, device=device)
    saved, current = state.get("recipe", {}), config.model_dump(mode="json")
    key = first_changed_key(saved, current, ignore=EVALUATION_KEYS)
    if key is not None:
        raise ConfigError(
            f"--resume: key {key!r} is {current.get(key)!r} but {latest} was written with "
            f"{saved.get(key)!r}; resume with the original recipe or use another --output")
    if state.get("world_size", 1) != parallel.world_size:
        raise ConfigError(
            f"--resume: {latest} was written by {state.get('world_size', 1)} process(es), this "
            f"run has {parallel.world_size}; resume with the same torchrun --nproc_per_node")
    console.print(f"resuming from {latest} (stage {state['stage'] + 1}, "
                  f"step {state['progress']['step']})")
    return state


@dataclass
class StageContext:
    """What a stage needs to checkpoint itself and to continue from a checkpoint."""

    index: int
    finished: list[StageResult]
    checkpoints: Checkpoints
    config: MultiExitGlueConfig
    parallel: DataParallel
    autocast: Callable[[], AbstractContextManager[Any]]
    restored: dict[str, Any] | None


def run_stage(stage: Stage, model: MultiExitModel, batches: Any, steps_per_epoch: int,
              log: Loggers, progress: Any, context: StageContext) -> StageResult:
    config = context.config
    params = set_trainable(model, stage)
    optimizer = build_optimizer(config.optimizer, params)
    scheduler = build_scheduler(config.scheduler, optimizer,
                                total_steps=stage_steps(steps_per_epoch, config.epochs))
    several = len(stage.groups) > 1
    device_type = next(model.parameters()).device.type
    loss_scale = (LossScale(torch.amp.GradScaler(device_type))
                  if config.precision == "fp16" else None)
    surgery = Surgery(
        model, optimizer, config.combiner_spec() if several else "sum",
        include=config.include if several else None,
        exclude=config.exclude if several else None,
        max_grad_norm=config.max_grad_norm,
        max_nonfinite_steps=config.max_nonfinite_steps,
        data_parallel=context.parallel,
        loss_scale=loss_scale,
    )
    resume = None
    if context.restored is not None:
        optimizer.load_state_dict(context.restored["optimizer"])
        scheduler.load_state_dict(context.restored["scheduler"])
        surgery.load_state_dict(context.restored["surgery"])
        resume = StageProgress.from_state(context.restored["progress"])
        restore_rng(context.restored["rng"][context.parallel.rank])

    def save(state: StageProgress) -> None:
        rng = context.parallel.gather_objects(capture_rng())  # each rank's dropout stream
        if not context.parallel.is_main:
            return
        global_step = sum(r.steps for r in context.finished) + state.step
        context.checkpoints.save(global_step, model=model, state={
            "world_size": context.parallel.world_size,
            "recipe": config.model_dump(mode="json"),
            "stage": context.index,
            "finished": [dataclasses.asdict(r) for r in context.finished],
            "progress": state.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "surgery": surgery.state_dict(),
            "rng": rng,
            "log_offset": log.tell(),
        })

    try:
        return train_stage(
            name=stage.name, model=model, batches=batches, steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            loss_fn=lambda batch: mixed_precision_losses(model, batch, stage, context.autocast),
            surgery=surgery, optimizer=optimizer, scheduler=scheduler, log=log,
            log_every=config.log_every, progress=progress, resume=resume,
            save_checkpoint=save if config.checkpoints else None,
            checkpoint_every=config.checkpoint_every,
            weighting=getattr(model, "loss_weighting", None),
        )
    finally:
        surgery.remove()
        model.requires_grad_(True)


def mixed_precision_losses(model: MultiExitModel, batch: Mapping[str, Tensor], stage: Stage,
                           autocast: Any) -> dict[str, Tensor]:
    """The stage's group losses, the forward pass under the recipe's autocast; losses in
    float32 (autocast runs softmax / KL in float32 already; the cast makes it explicit)."""
    with autocast():
        logits = forward(model, batch)
    return group_losses([x.float() for x in logits], batch["labels"],
                        model.loss_terms[stage.name])


def evaluate(all_logits: Tensor, labels: Tensor, task: TaskSpec, config: MultiExitGlueConfig,
             output_dir: Path) -> dict[str, Any]:
    """Per-exit metrics, the exit-policy sweep, their tables and the paper-style plots."""
    primary = primary_metric(task.name)
    per_exit = per_exit_metrics(all_logits, labels, task.name)
    console.print(exit_metrics_table(per_exit, title=f"{task.name} {config.eval_split}, per exit"))
    results: dict[str, Any] = {
        "program": "multiexit_glue", "mode": config.mode, "task": task.name,
        "model": config.model, "primary_metric": primary, "exit_metrics": per_exit,
        "eval_split": config.eval_split, "eval_rows": config.eval_rows,
        "num_eval_examples": int(all_logits.shape[1]),
    }
    plots = output_dir / "plots"
    plots.mkdir(exist_ok=True)
    plot_exit_metrics({config.mode: [m[primary] for m in per_exit]}, primary,
                      plots / "metric_per_exit.png")
    name, params = config.policy_spec()
    results.update(tradeoff_results(all_logits, labels, task, config, per_exit, plots))
    policy_cls = POLICIES.get(name)
    if task.is_regression and policy_cls.classification_only:
        return results  # e.g. entropy: undefined for a single regression output
    sweep = policy_sweep(all_logits, labels, task.name, name, config.sweep, params)
    swept = policy_cls.sweep_parameter or "value"
    console.print(sweep_table(sweep, primary, parameter=swept, title=(
        f"{task.name} {config.eval_split}, early exit by {name}")))
    results["exit_policy"] = {"name": name, **params}
    results["sweep"] = [
        {swept: p.value, **p.metric, "time_percent": p.time_percent, "exit_counts": p.exit_counts}
        for p in sweep
    ]
    plot_tradeoff({config.mode: [(p.time_percent, p.metric[primary]) for p in sweep]}, primary,
                  plots / "metric_vs_time.png")
    middle = sweep[len(sweep) // 2]
    plot_exit_distribution(middle.exit_counts, plots / "exit_layers.png",
                           title=f"exit layers at {name} {swept}={middle.value:g}")
    return results


def tradeoff_results(all_logits: Tensor, labels: Tensor, task: TaskSpec,
                     config: MultiExitGlueConfig, per_exit: list[dict[str, float]],
                     plots: Path) -> dict[str, Any]:
    """The dense sweep of the recipe's exit policy (thresholds from the model's own outputs;
    regression: patience with swept tolerance) and its summary numbers, for results.json."""
    primary = primary_metric(task.name)
    name, params = config.policy_spec()
    dense = dense_sweep(all_logits, labels, task.name, name, params)
    if dense is None:  # a plugin's policy: its fixed list (`sweep`) is all there is
        return {}
    points = [(p.time_percent, p.metric[primary]) for p in dense.points]
    summary = summarize(points, [m[primary] for m in per_exit], primary)
    console.print(tradeoff_table({config.mode: summary}, title=(
        f"{task.name} {config.eval_split}, {dense.policy} {dense.parameter} swept over "
        f"{len(points)} values from the model's outputs")))
    plot_tradeoff({f"{config.mode} ({dense.policy})": points}, primary,
                  plots / "metric_vs_time_dense.png")
    return {"dense_sweep": dense.to_json(), "tradeoff": summary.to_json()}


PROGRAM = Program(
    name="multiexit_glue",
    config=MultiExitGlueConfig,
    run=run,
    summary="multi-exit encoders on GLUE (RomeBERT, RomeBERT-SD, DeeBERT, DeeBERT-SD, PABEE, "
    "ELBERT)",
    evaluation_keys=EVALUATION_KEYS,
)
