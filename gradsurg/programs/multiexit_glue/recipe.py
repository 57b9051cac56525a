"""The `multiexit_glue` program: RomeBERT and its baselines on GLUE, as one recipe class.

`MultiExitGlueRecipe(config, output_dir)` follows torchtune's single-device recipes: `setup`
resolves every name once (task, mode, loss groups, combiner, weighting, exit policy) and,
when resuming, restores the newest checkpoint; `train` runs the mode's stages (see `modes.py`),
each continuing where the checkpoint left it; `evaluate` scores every exit and sweeps the exit
policy; `save` writes the model for `gradsurg predict / eval`. Resume is the class's own
business: the CLI only checks the output folder and calls `run(config, folder, resume=True)`.
Without an output folder (`output_dir=None`, `log=`) it trains in memory: no checkpoint, no
log file, the records go to `log` (what `gradsurg conflicts` measures).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor
from torch.utils.data import DataLoader

from gradsurg.checkpoint import Checkpoints, capture_rng, restore_rng
from gradsurg.combiners import COMBINERS, Combiner
from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import TaskSpec
from gradsurg.devices import resolve_device, to_device
from gradsurg.distributed import DataParallel
from gradsurg.engines import (
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    shard_model,
)
from gradsurg.errors import ConfigError
from gradsurg.finite_weights import check_finite_outputs, check_finite_weights
from gradsurg.loggers import Loggers, MemoryLog, open_loggers
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import ExitPolicy
from gradsurg.optimizers import OptimizerSettings, build_optimizer, build_scheduler
from gradsurg.outputs import replace_folder
from gradsurg.precision import LossScale, autocast_factory
from gradsurg.programs import Program, training
from gradsurg.programs.multiexit_glue.checks import (
    EVALUATION_KEYS,
    ExitPolicySetting,
    check_against_model,
)
from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.conflicts import measure_conflicts
from gradsurg.programs.multiexit_glue.data import epoch_order, forward, load_split
from gradsurg.programs.multiexit_glue.evaluation import (
    collect_exit_logits,
    evaluation_results,
    save_exit_logits,
)
from gradsurg.programs.multiexit_glue.modes import TrainingStage
from gradsurg.programs.multiexit_glue.stages import (
    StageGroups,
    TrainingParts,
    build_loss_groups,
    build_weighting,
    check_combiner_groups,
    group_losses,
    learned_facts,
    set_trainable,
    with_parts,
)
from gradsurg.programs.training import StageProgress, StageResult, progress_bar
from gradsurg.run_folder import CHECKPOINTS_DIR, plain_defaults, refuse_changed_recipe
from gradsurg.surgery import Surgery
from gradsurg.weightings import LossWeighting

console = Console()


@dataclass(frozen=True)
class RecipePlan:
    """What `setup` resolved from the recipe's names, each built once and handed down as
    objects: the task, the exit policy (with its sweep values) and the policy at each of
    them (`sweep`, checked against the model; empty where the run makes no sweep), the
    stages with their built loss groups, the combiner and the loss weighting. Training,
    evaluation and the sweeps take these, never the recipe's strings."""

    task: TaskSpec
    exit_policy: ExitPolicySetting
    sweep: tuple[ExitPolicy, ...]
    stages: tuple[TrainingStage, ...]
    combiner: Combiner
    loss_groups: StageGroups
    weighting: LossWeighting | None


class MultiExitGlueRecipe:
    """One multi-exit GLUE run into `output_dir` (None: in memory, records into `log`):
    setup, train, evaluate, save."""

    # Built by `setup`: the plan (every name resolved once) and the model.
    plan: RecipePlan
    model: MultiExitModel
    parts: TrainingParts  # the loss terms and the weighting: trained, never saved as model
    # The stage being trained (`train_stage`): what `save_checkpoint` writes.
    stage_index: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    surgery: Surgery

    def __init__(self, config: MultiExitGlueConfig, output_dir: Path | None, *,
                 log: MemoryLog | None = None) -> None:
        if (output_dir is None) == (log is None):
            raise ValueError("give an output folder or an in-memory log, not both or neither")
        self.config = config
        self.output_dir = output_dir
        self.memory_log = log
        self.mode = config.mode_spec
        self.checkpoints = (None if output_dir is None else
                            Checkpoints(output_dir / CHECKPOINTS_DIR, keep=config.keep_checkpoints))
        #: The checkpoint resumed from (None: a fresh start) and the stages it had finished.
        self.restored: dict[str, Any] | None = None
        self.finished: list[StageResult] = []
        #: FSDP2 (`distributed.strategy: fsdp`): the model is sharded; rank 0's whole copy.
        self.sharded = False
        self.whole: MultiExitModel | None = None

    @property
    def folder(self) -> Path:
        """The output folder; evaluating and saving need one (an in-memory run has none)."""
        if self.output_dir is None:
            raise ValueError("this run trains in memory: it has no folder to write to")
        return self.output_dir

    # The plan's parts, as the training and evaluation below read them.
    @property
    def task(self) -> TaskSpec:
        return self.plan.task

    @property
    def stages(self) -> tuple[TrainingStage, ...]:
        return self.plan.stages

    @property
    def combiner(self) -> Combiner:
        return self.plan.combiner

    @property
    def loss_groups(self) -> StageGroups:
        return self.plan.loss_groups

    @property
    def weighting(self) -> LossWeighting | None:
        return self.plan.weighting

    # -- setup ---------------------------------------------------------------------------

    def setup(self, *, resume: bool = False) -> None:
        """Build everything the recipe names, once, and check it against the model before
        the first step; with `resume`, restore the newest checkpoint's weights and state."""
        config = self.config
        if resume and self.checkpoints is None:
            raise ValueError("resuming needs the run's output folder")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed, deterministic=config.deterministic)
        self.parallel = DataParallel.from_environment()
        self.sharded = config.distributed.strategy == "fsdp"
        if self.sharded and not self.parallel.enabled:
            raise ConfigError("distributed.strategy fsdp shards the model over torchrun's "
                              "processes, and this run has one: launch it with torchrun "
                              "--nproc_per_node=N (N > 1), or use strategy ddp")
        self.device = resolve_device(config.device, local_rank=self.parallel.local_rank)
        self.autocast = autocast_factory(config.precision, self.device)  # fp16 on a CPU: here
        task, policy = config.task_spec, config.exit_policy_setting  # resolved in validation
        self.model, self.tokenizer, sweep = self._setup_model(task, policy)
        joint = config.joint_groups(self.model.num_exits) if self.mode.one_stage else None
        stages = self.mode.stages_with(joint)
        combiner = COMBINERS.build(config.combiner_spec(), where="combiner")
        check_combiner_groups(combiner, stages)
        self.plan = RecipePlan(
            task=task, exit_policy=policy, sweep=tuple(sweep), stages=stages, combiner=combiner,
            loss_groups=build_loss_groups(self.model.num_exits, stages, config),
            weighting=build_weighting(stages, config))
        if config.preference_conditioning:  # the ray's groups exist now (per-exit: by depth)
            assert self.weighting is not None  # validation asks for cosmos or pbi
            self.model.condition_on_preference(list(self.weighting.groups))
            self.model.to(self.device)
        self.parts = TrainingParts(self.plan.loss_groups, self.plan.weighting).to(self.device)
        self.parallel.broadcast_module_(self.model)
        self.parallel.broadcast_module_(self.parts)
        if resume:
            self.load_checkpoint()
        if self.sharded:
            self._shard()
        self._setup_data()
        if self.task.is_regression and self.restored is None:
            start_at_label_mean(self.model, self.train_data["label"])
        self.log = self._open_log()

    def _shard(self) -> None:
        """FSDP2 over every encoder layer and the root (exits; the training parts stay whole
        on every rank). Rank 0 keeps a whole copy of the model for checkpoints and evaluation,
        refreshed from the shards whenever it writes."""
        learned = [name for name, p in self.parts.named_parameters() if p.requires_grad]
        if learned:
            raise ConfigError(
                "distributed.strategy fsdp does not yet shard learned loss weights (here "
                f"{learned[0]}: a `weighting:` or ELBERT's exit weights); use strategy ddp "
                "for this recipe")
        self.whole = copy.deepcopy(self.model) if self.parallel.is_main else None
        mesh = shard_model(self.model, list(self.model.encoder.layers), self.device)
        self.parallel = DataParallel.of_group(mesh.get_group(), sharded=True)

    def _gather_whole(self) -> MultiExitModel | None:
        """Rank 0's whole model, up to date (None on other ranks); every rank must call it."""
        if not self.sharded:
            return self.model
        state = full_model_state(self.model)
        if self.whole is not None:
            self.whole.load_state_dict(state)
        return self.whole

    def _setup_model(self, task: TaskSpec, policy: ExitPolicySetting
                     ) -> tuple[MultiExitModel, Any, list[ExitPolicy]]:
        """The model and tokenizer, checked against the recipe before any step, and the
        sweep's policies that check built."""
        config = self.config
        model, tokenizer = MultiExitModel.from_backbone(
            config.model, num_labels=task.num_labels, pooling=config.pooling,
            dropout=config.dropout, backbone_dropout=config.backbone_dropout,
            shared_exit=self.mode.shared_exit,
            gradient_equilibrium=config.gradient_equilibrium,
        )
        # Recorded in the checkpoint so `gradsurg predict/eval` know the classes and the task.
        model.config = dataclasses.replace(
            model.config, task=task.name, labels=list(task.labels) if task.labels else None)
        sweep = check_against_model(config, policy, num_layers=model.num_exits,
                                    num_outputs=task.num_labels,
                                    hf_config=model.encoder.hf_config)  # before any step
        return model.to(self.device), tokenizer, sweep

    def _setup_data(self) -> None:
        config, task = self.config, self.task
        self.collate = GlueCollator(self.tokenizer)
        self.train_data = tokenize_dataset(
            load_split(task, "train", data_dir=config.data_dir, rows=config.train_rows,
                       shuffle_seed=config.seed),
            self.tokenizer, max_length=config.max_length,
        )
        eval_data = tokenize_dataset(
            load_split(task, config.eval_split, data_dir=config.data_dir,
                       rows=config.eval_rows, shuffle_seed=None),
            self.tokenizer, max_length=config.max_length,
        )
        self.eval_loader = DataLoader(eval_data, batch_size=config.eval_batch_size,
                                      collate_fn=self.collate)
        self.batches_per_epoch = -(-len(self.train_data) // config.batch_size)

    def _open_log(self) -> Loggers:
        """The recipe's loggers (train_log.jsonl, TensorBoard), cut back to the resumed
        checkpoint's position; rank 0 writes. In memory: the given log alone."""
        if self.memory_log is not None:
            return Loggers([self.memory_log])
        return open_loggers(self.config.loggers,
                            self.output_dir if self.parallel.is_main else None,
                            truncate_to=self.restored["log_offset"] if self.restored else 0)

    def build_optimizer_and_schedule(self, params: list[torch.nn.Parameter], total: int
                                     ) -> tuple[torch.optim.Optimizer,
                                                torch.optim.lr_scheduler.LRScheduler]:
        """A stage's optimizer and LR schedule over its trainable parameters; the loss terms'
        learned ones (ELBERT's exit weights) in a group of their own (see `param_groups`)."""
        learned = {id(p) for p in self.parts.loss_terms.parameters()}
        groups = param_groups(params, learned, lr=self.config.learned_terms_lr(),
                              optimizer=self.config.optimizer)
        optimizer = build_optimizer(self.config.optimizer, groups)
        return optimizer, build_scheduler(self.config.scheduler, optimizer, total_steps=total)

    # -- checkpoints ---------------------------------------------------------------------

    def load_checkpoint(self) -> None:
        """Load the newest checkpoint's weights and keep its state for the stage it stopped
        in; none: start from step 0. A checkpoint of another recipe or process count is
        refused: continuing it would silently train a run that matches neither."""
        assert self.checkpoints is not None  # setup refuses resume without a folder
        latest = self.checkpoints.latest()
        if latest is None:
            console.print(f"no checkpoint in {self.checkpoints.root}: starting from step 0")
            return
        state = self.checkpoints.load(latest, model=with_parts(self.model, self.parts),
                                      device=self.device)
        saved, current = state.get("recipe", {}), self.config.model_dump(mode="json")
        refuse_changed_recipe(saved, current, ignore=EVALUATION_KEYS, saved_in=str(latest),
                              defaults=plain_defaults(type(self.config)),
                              advice="resume with the original recipe or use another --output")
        if state.get("world_size", 1) != self.parallel.world_size:
            raise ConfigError(
                f"--resume: {latest} was written by {state.get('world_size', 1)} process(es), "
                f"this run has {self.parallel.world_size}; resume with the same torchrun "
                "--nproc_per_node")
        console.print(f"resuming from {latest} (stage {state['stage'] + 1}, "
                      f"step {state['progress']['step']})")
        self.restored = state
        self.finished = [StageResult(**result) for result in state.get("finished", [])]

    def save_checkpoint(self, progress: StageProgress) -> None:
        """Everything a resumed run needs to continue this stage bit for bit."""
        rng = self.parallel.gather_objects(capture_rng())  # each rank's dropout stream
        whole = self._gather_whole()  # FSDP2: collective; whole weights on rank 0
        optimizer_state = (full_optimizer_state(self.model, self.optimizer) if self.sharded
                           else self.optimizer.state_dict())
        if not self.parallel.is_main:
            return
        assert whole is not None and self.checkpoints is not None
        global_step = sum(r.steps for r in self.finished) + progress.step
        self.checkpoints.save(global_step, model=with_parts(whole, self.parts), state={
            "world_size": self.parallel.world_size,
            "recipe": self.config.model_dump(mode="json"),
            "stage": self.stage_index,
            "finished": [dataclasses.asdict(r) for r in self.finished],
            "progress": progress.state_dict(),
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "surgery": self.surgery.state_dict(),
            "rng": rng,
            "log_offset": self.log.tell(),
        })

    def _restore_stage(self) -> StageProgress | None:
        """The resumed checkpoint's progress in the current stage, its optimizer, schedule,
        surgery and RNG state loaded; None when this stage starts fresh."""
        state = self.restored
        if state is None or state["stage"] != self.stage_index:
            return None
        try:
            if self.sharded:
                load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # e.g. an ELBERT checkpoint from before exit_weights_lr
            raise ConfigError(
                f"--resume: the checkpoint's optimizer does not fit this run's ({error}); it "
                "was written by another version of gradsurg: start the run again") from None
        self.scheduler.load_state_dict(state["scheduler"])
        surgery_state = state["surgery"]
        if self.weighting is not None and "loss_weighting" not in surgery_state:
            # written before issue 27: the weighting's state is in model.safetensors only
            surgery_state = {**surgery_state, "loss_weighting": self.weighting.state_dict()}
        self.surgery.load_state_dict(surgery_state)
        restore_rng(state["rng"][self.parallel.rank])
        return StageProgress.from_state(state["progress"])

    # -- training ------------------------------------------------------------------------

    def train(self, *, stop_after: int | None = None) -> list[StageResult]:
        """Train the stages the resumed checkpoint (if any) had not finished, in order; with
        `stop_after`, each stage's first `stop_after` steps (its LR schedule unchanged)."""
        try:
            with progress_bar(disable=not self.parallel.is_main) as progress:
                for index, stage in enumerate(self.stages):
                    if index < len(self.finished):
                        continue  # finished before the restart
                    self.finished.append(self.train_stage(index, stage, progress,
                                                          stop_after=stop_after))
        finally:
            self.log.close()
        whole = self._gather_whole()  # FSDP2: rank 0 evaluates and saves the whole model
        if whole is not None:
            self.model = whole
        self.parallel.barrier()
        self.parallel.close()
        return self.finished

    def train_stage(self, index: int, stage: TrainingStage, progress: Progress, *,
                    stop_after: int | None = None) -> StageResult:
        """One stage: its trainable parts, optimizer, schedule and surgery; the loop."""
        config = self.config
        params = set_trainable(self.model, self.parts, stage)
        several = len(stage.groups) > 1  # one group: nothing to combine or select
        # sdmgrad, modo: several consecutive batches per step, so fewer steps per epoch
        per_step = self.combiner.batches_per_step if several else 1
        steps_per_epoch = training.epoch_steps(self.batches_per_epoch, per_step,
                                               combiner=self.combiner.name)
        total = training.stage_steps(steps_per_epoch, config.epochs)
        self.optimizer, self.scheduler = self.build_optimizer_and_schedule(params, total)
        loss_scale = (LossScale(torch.amp.GradScaler(self.device.type))
                      if config.precision == "fp16" else None)
        self.surgery = Surgery(
            self.model, self.optimizer, self.combiner if several else "sum",
            include=config.include if several else None,
            exclude=config.exclude if several else None,
            # sum and mean skip the matrix: build it once per log line for the block cosines
            conflict_blocks=config.conflict_blocks if several else None,
            diagnostics_every=(config.log_every if several and config.conflict_blocks
                               else None),
            max_grad_norm=config.max_grad_norm,
            max_nonfinite_steps=config.max_nonfinite_steps,
            data_parallel=self.parallel,
            loss_scale=loss_scale,
            weighting=self.weighting,
            training_parts={"loss_terms": self.parts.loss_terms},
        )
        self.stage_index = index
        resume = self._restore_stage()
        try:
            return training.train_stage(
                name=stage.name, model=self.model, batches=self.batches,
                steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                loss_fn=lambda batch: self.stage_losses(stage, batch),
                surgery=self.surgery, optimizer=self.optimizer, scheduler=self.scheduler,
                log=self.log, log_every=config.log_every, progress=progress, resume=resume,
                save_checkpoint=(self.save_checkpoint
                                 if config.checkpoints and self.checkpoints is not None else None),
                checkpoint_every=config.checkpoint_every, stop_after=stop_after,
            )
        finally:
            self.surgery.remove()
            self.model.requires_grad_(True)
            self.parts.requires_grad_(True)

    def batches(self, epoch: int, skip: int) -> Iterator[tuple[dict[str, Tensor], float]]:
        """An epoch's `(batch, share)` pairs from the `skip`-th batch on, on the device."""
        config = self.config
        order = epoch_order(len(self.train_data), config.batch_size, seed=config.seed,
                            epoch=epoch)
        shards = [self.parallel.shard(rows) for rows in order[skip:]]  # one process: all
        # Its own generator: a loader otherwise draws a seed from the global RNG, which would
        # shift the dropout masks of a run resumed mid-epoch.
        loader = DataLoader(self.train_data, batch_sampler=[rows for rows, _ in shards],
                            collate_fn=self.collate,
                            generator=torch.Generator().manual_seed(config.seed + epoch))
        for batch, (_, share) in zip(loader, shards):
            yield to_device(batch, self.device), share

    def stage_losses(self, stage: TrainingStage, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The stage's group losses, the forward pass under the recipe's autocast; losses in
        float32 (autocast runs softmax / KL in float32 already; the cast makes it explicit)."""
        if self.config.preference_conditioning:  # the ray this step's weights use
            self.model.preference.copy_(self.weighting.current_preference)
        with self.autocast():
            logits = forward(self.model, batch)
        return group_losses([x.float() for x in logits], batch["labels"],
                            self.loss_groups[stage.name])

    # -- evaluation and outputs ----------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Every exit's dev outputs (saved for `gradsurg compare`), metrics and sweeps."""
        config = self.config
        check_finite_weights(self.model, when="after training")
        if self.config.preference_conditioning:  # not the last step's ray: the default
            self.model.set_preference(None)
        all_logits, labels = collect_exit_logits(self.model, self.eval_loader, self.device)
        check_finite_outputs(all_logits, what=f"{config.eval_split} evaluation")
        save_exit_logits(all_logits, labels, self.folder)
        return evaluation_results(
            all_logits, labels, task=self.task, mode=config.mode, model=config.model,
            split=config.eval_split, rows=config.eval_rows, policy=self.plan.exit_policy,
            sweep_policies=self.plan.sweep,
            output_dir=self.folder)

    def training_summary(self) -> dict[str, Any]:
        """Steps, time and mean losses per stage; what the loss terms and weighting learned."""
        summary: dict[str, Any] = {"train": {
            r.name: {"steps": r.steps, "seconds": round(r.seconds, 2),
                     **{k: round(v, 6) for k, v in r.means.items()}}
            for r in self.finished
        }}
        learned = learned_facts(self.loss_groups)
        if learned:
            summary["loss_terms"] = learned  # e.g. ELBERT's exit weights after training
        if self.weighting is not None:
            summary["weighting"] = {"name": self.weighting.name, **{
                key: round(value, 6) for key, value in self.weighting.describe().items()}}
        if self.config.preference_conditioning:  # what the dev evaluation answered for
            summary["preference_conditioning"] = {
                "groups": list(self.model.config.preference_groups or []),
                "eval_preference": [round(v, 6) for v in self.model.preference.tolist()]}
        return summary

    def save(self) -> Path:
        """The model folder `gradsurg predict / eval` reload; never left half-written."""
        folder = self.folder / "model"
        replace_folder(folder, lambda staging: self.model.save_pretrained(
            staging, tokenizer=self.tokenizer))
        return folder


def run(config: MultiExitGlueConfig, output_dir: Path, *, resume: bool = False
        ) -> dict[str, Any]:
    """Train every stage of the mode, evaluate, write the outputs into `output_dir`.

    Checkpoints go to `output_dir/checkpoints` (every `checkpoint_every` steps and after each
    epoch); `resume=True` continues from the latest one, bit for bit on a deterministic CPU.
    """
    recipe = MultiExitGlueRecipe(config, output_dir)
    recipe.setup(resume=resume)
    recipe.train()
    if not recipe.parallel.is_main:  # rank 0 alone evaluates and writes the outputs
        return {}
    results = recipe.evaluate()
    results.update(recipe.training_summary())
    if config.save_model:
        results["model_dir"] = str(recipe.save())
    return results


def param_groups(params: list[torch.nn.Parameter], learned: set[int], *, lr: float,
                 optimizer: OptimizerSettings) -> list[dict[str, Any]]:
    """The optimizer's groups: the model's parameters with the recipe's settings, and the
    parameters whose ids are in `learned` at `lr` without weight decay.

    ELBERT's exit weights W are a handful of scalars behind a sigmoid: at the model's lr
    (2e-5 to 5e-5) Adam moves each by at most lr per step, so sigmoid(W) stays at 0.5 +- 0.002
    after an epoch; its authors give W a group of its own at 1e-2, not decayed (their
    weight_decay is 0). Both groups follow the stage's LR schedule.
    """
    own = [p for p in params if id(p) in learned]
    if not own:
        return [{"params": params}]
    group: dict[str, Any] = {"params": own, "lr": lr}
    if "weight_decay" in optimizer.options():
        group["weight_decay"] = 0.0
    return [{"params": [p for p in params if id(p) not in learned]}, group]


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)


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


PROGRAM = Program(
    name="multiexit_glue",
    config=MultiExitGlueConfig,
    run=run,
    summary="multi-exit encoders on GLUE (RomeBERT, RomeBERT-SD, DeeBERT, DeeBERT-SD, PABEE, "
    "ELBERT)",
    evaluation_keys=EVALUATION_KEYS,
    resumable=True,
    measure_conflicts=measure_conflicts,
)
