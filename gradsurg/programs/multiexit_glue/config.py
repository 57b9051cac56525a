"""Recipe schema of the `multiexit_glue` program (RomeBERT, DeeBERT, their SD variants, PABEE,
ELBERT)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gradsurg.combiners import COMBINERS
from gradsurg.combiners.blocks import blocks_problem
from gradsurg.data.glue import GLUE_TASKS, TaskSpec, get_task
from gradsurg.errors import ConfigError
from gradsurg.loggers import LoggerNames
from gradsurg.multiexit.backbones import check_backbone_installed
from gradsurg.multiexit.losses.terms import LOSS_TERMS, per_exit_groups
from gradsurg.multiexit.policies import POLICIES
from gradsurg.optimizers import (
    OptimizerSettings,
    SchedulerSettings,
    buildable_optimizer,
    refuse_moved_keys,
)
from gradsurg.programs import ProgramConfig
from gradsurg.programs.multiexit_glue.modes import MODES, Mode, ModeSpec
from gradsurg.registry import Registry
from gradsurg.weightings import WEIGHTINGS

if TYPE_CHECKING:
    from gradsurg.programs.multiexit_glue.checks import ExitPolicySetting

#: What a stage's `trained_exits` means, for messages.
_TRAINED = {"all": "every exit", "final": "the final exit", "early": "the early exits"}

#: The learning rate of ELBERT's exit weights in its authors' code (`w_lr`).
DEFAULT_EXIT_WEIGHTS_LR = 1e-2


class DistributedSettings(BaseModel):
    """A recipe's `distributed:`: how `torchrun` processes share the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every rank holds the whole model and the groups' gradient "
        "rows are all-reduced; fsdp: FSDP2 shards every encoder layer and the rest over the "
        "ranks (each keeps its shard of every row); needs torchrun with several processes")


class MultiExitGlueConfig(ProgramConfig):
    """Every key a multi-exit GLUE recipe may set; defaults are the RomeBERT paper's."""

    mode: Mode = Field("romebert", description="romebert (project), romebert_sd (sum), "
                       "deebert or deebert_sd (two stages), pabee (depth-weighted exit "
                       "losses), elbert (one shared exit, learned exit weights)")
    task: str = Field("sst2", description="GLUE task: sst2, mrpc, rte, cola, stsb, qnli, qqp, mnli")
    data_dir: str | None = Field(
        None, description="GLUE_DIR-style folder; default: $GLUE_DIR, else the hub"
    )
    model: str = Field("minilm", min_length=1,
                       description="short name (minilm; mpnet-base: 12 layers, its weights "
                       "from gradsurg[mpnet]), Hugging Face id or local folder")
    pooling: Literal["cls", "mean"] = Field("mean", description="what each exit reads: [CLS] or "
                                            "the masked mean of the layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside every exit")
    backbone_dropout: float | None = Field(
        None, ge=0, lt=1, description="the backbone's hidden and attention dropout; "
        "default: the checkpoint's own (0.1 for BERT)")
    max_length: int = Field(128, ge=8, description="tokens kept per example (truncation)")
    train_rows: int | None = Field(None, ge=1, description="seeded random subset of train")
    eval_rows: int | None = Field(None, ge=1, description="first rows of the dev split")
    eval_split: str = Field("dev", description="split scored after training")
    batch_size: int = Field(8, ge=1, description="training batch size")
    eval_batch_size: int = Field(64, ge=1, description="evaluation batch size")
    epochs: float = Field(3, gt=0, description="per stage; fractions train part of an epoch")
    optimizer: OptimizerSettings = Field(
        default_factory=OptimizerSettings, description="what steps the weights: {name, lr, "
        "weight_decay, any other option of its constructor}; default: AdamW, lr 2e-5")
    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings, description="each stage's LR schedule: {name: "
        "linear|cosine|constant, warmup_ratio or warmup_steps}; default: linear decay to 0")
    loggers: LoggerNames = Field(["jsonl"], description="where training logs go: jsonl "
                                 "(train_log.jsonl), tensorboard (tensorboard/<stage>/)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the combined gradient")
    max_nonfinite_steps: int = Field(
        10, ge=1, description="NaN/inf steps are skipped; this many in a row stop the run")
    seed: int = Field(42, ge=0, le=2**63 - 1,
                      description="seeds the subset, shuffling, init and dropout (0..2**63-1)")
    gamma: float = Field(0.9, ge=0, le=1, description="SD weight of the KL term vs CE")
    temperature: float = Field(3.0, gt=0, description="SD softmax temperature T")
    exit_weights_lr: float | None = Field(
        None, gt=0, description="learning rate of the loss terms' learned parameters (ELBERT's "
        "exit weights, loss term learned_exit_weights): their own optimizer group, no weight "
        "decay, the stage's LR schedule; default: 1e-2 (ELBERT's code). Only where a loss "
        "term learns")
    loss_groups: dict[str, str | dict[str, Any]] | None = Field(
        None, description="one-stage modes: loss group name -> loss term (a name or {name, "
        "params}), replacing the mode's groups; default: the mode's own")
    exit_groups: Literal["sd", "task"] | None = Field(
        None, description="romebert / romebert_sd: one loss group per exit, exit1 .. exitL "
        "(exitL: the final task loss; the early exits: their own SD share (sd) or their plain "
        "task loss (task)), so a combiner acts on L rows; replaces final + sd")
    combiner: str | dict[str, Any] | None = Field(
        None, description="default: project (final vs sd) for romebert, sum otherwise"
    )
    weighting: str | dict[str, Any] | None = Field(
        None, description="one-stage modes with two or more loss groups: a loss weighting "
        "(uncertainty, dwa, famo, geometric, imtll, stch; a name or {name, params}) applied "
        "to the group losses before the combiner")
    preference_conditioning: bool = Field(
        False, description="COSMOS: feed the model the weighting's preference ray each step "
        "(a learned linear map from the ray to the hidden size, added to the embeddings); "
        "needs weighting cosmos or pbi with resample: true. The dev evaluation and gradsurg "
        "predict / eval use the centre (1/k each) unless --preference says otherwise")
    gradient_equilibrium: bool = Field(
        False, description="gradient equilibrium (Li et al., ICCV 2019): in the backward pass "
        "each layer's output passes 1/(L-i+1) of its own exit's gradient and (L-i)/(L-i+1) of "
        "the deeper layers', so layer i gets the mean of the gradients of the exits above it, "
        "not their sum; one-stage modes; saved with the model")
    conflict_blocks: str | list[str] | None = Field(
        None, description="log, per parameter block and pair of loss groups, the cosine and "
        "whether it was negative (cosine/<block>/<a>/<b>, conflict/<block>/<a>/<b>), so "
        "`gradsurg compare` draws the run's conflict map; per_layer: a block per encoder "
        "layer, or a list of globs over the surgery parameters; the update is unchanged. With "
        "sum or mean the matrix is built once per log line for it; one-stage modes with two or "
        "more loss groups")
    include: list[str] | None = Field(["encoder.layers.*"], description="surgery parameters")
    exclude: list[str] | None = Field(None, description="parameters left out of surgery")
    exit_policy: str | dict[str, Any] = Field(
        "entropy", description="exit policy of the trade-off sweep: a name or {name, params}")
    sweep: list[float] | None = Field(
        None, description="values of the policy's swept parameter (entropy: thresholds); "
        "default: the policy's standard list")
    log_every: int = Field(50, ge=1, description="training steps per train_log.jsonl line")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16: autocast (CPU or GPU); fp16: autocast + loss scaling (GPU)")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's)")
    save_model: bool = Field(True, description="write model/ for gradsurg predict / eval")
    checkpoints: bool = Field(True, description="write checkpoints/ so `run --resume` can "
                              "continue after a crash")
    checkpoint_every: int | None = Field(
        500, ge=1, description="optimizer steps between checkpoints (also after every epoch); "
        "null: after every epoch only")
    keep_checkpoints: int = Field(1, ge=1, description="newest checkpoints kept on disk")
    deterministic: bool = Field(False, description="torch deterministic algorithms: bitwise "
                                "repeatable runs and resumes, sometimes slower")
    distributed: DistributedSettings = Field(
        default_factory=DistributedSettings, description="under torchrun: {strategy: ddp | "
        "fsdp}; default ddp")

    _moved_keys = model_validator(mode="before")(refuse_moved_keys)
    # Resolved once, by the validators below, and handed to the run (see `task_spec`).
    _task_spec: Any = PrivateAttr(None)
    _exit_policy_setting: Any = PrivateAttr(None)
    #: The combiner as validation built it, once for every check across keys (never trained).
    _checked_combiner: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _optimizer_builds(self) -> MultiExitGlueConfig:
        buildable_optimizer(self.optimizer)
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        try:
            return get_task(value).name
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _keep_task_spec(self) -> MultiExitGlueConfig:
        self._task_spec = GLUE_TASKS[self.task]  # the canonical name `_known_task` resolved
        return self

    @field_validator("model")
    @classmethod
    def _backbone_installed(cls, value: str) -> str:
        """A packaged backbone whose packages are missing fails now, not after the run's
        folder is made (`model: mpnet-base` without its five weight packages)."""
        try:
            return check_backbone_installed(value)
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @field_validator("combiner")
    @classmethod
    def _buildable_combiner(cls, value: Any) -> Any:
        return value if value is None else _buildable(COMBINERS, value, where="combiner")

    @field_validator("exit_policy")
    @classmethod
    def _buildable_policy(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        return _buildable(POLICIES, value, where="exit_policy")

    @field_validator("conflict_blocks")
    @classmethod
    def _known_blocks(cls, value: str | list[str] | None) -> str | list[str] | None:
        problem = None if value is None else blocks_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("loss_groups")
    @classmethod
    def _buildable_loss_groups(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("key 'loss_groups': needs at least one group")
        for group, spec in value.items():
            try:
                LOSS_TERMS.build(spec, 2, where=f"key 'loss_groups.{group}'")
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _exit_weights_lr_has_weights(self) -> MultiExitGlueConfig:
        if self.exit_weights_lr is not None and not self.has_learned_terms():
            raise ValueError(
                f"key 'exit_weights_lr': no loss term of mode {self.mode} learns (ELBERT's "
                "learned_exit_weights does), so the key would do nothing; remove it")
        return self

    @model_validator(mode="after")
    def _equilibrium_has_exits_to_balance(self) -> MultiExitGlueConfig:
        """Gradient equilibrium balances exits that all train through the encoder; where a
        stage freezes it or trains one exit, it would do nothing or only shrink that exit's
        gradient (the other exits' shares of the mean are zero)."""
        if not self.gradient_equilibrium:
            return self
        why = [f"{stage.name} freezes the encoder, leaving nothing to rescale"
               if not stage.train_encoder else
               f"{stage.name} trains {_TRAINED[stage.trained_exits]} alone, whose gradient "
               "equilibrium would only shrink by 1/(L-i+1) at layer i"
               for stage in self.mode_spec.stages
               if not stage.train_encoder or stage.trained_exits != "all"]
        if why:
            one_stage = ", ".join(name for name, mode in MODES.items() if mode.one_stage)
            raise ValueError(f"key 'gradient_equilibrium': mode {self.mode}'s stage "
                             f"{'; stage '.join(why)}; use a one-stage mode ({one_stage})")
        if self.exit_groups is None and all(
                (spec if isinstance(spec, str) else spec.get("name")) == "final_task"
                for spec in self.joint_groups().values()):
            raise ValueError("key 'gradient_equilibrium': every loss group is the final "
                             "exit's (final_task), so equilibrium would only shrink its "
                             "gradient by 1/(L-i+1) at layer i; train the early exits too or "
                             "remove the key")
        return self

    @model_validator(mode="after")
    def _weighting_fits_the_groups(self) -> MultiExitGlueConfig:
        if self.weighting is None:
            return self
        if not self.mode_spec.one_stage:
            raise ValueError(f"key 'weighting': mode {self.mode} trains one loss group per "
                             "stage, so there is nothing to weigh; remove the key")
        if self.combiner is not None:
            try:
                per_step = self.combiner_for_checks().batches_per_step
            except ConfigError:
                per_step = 1  # a bad combiner is the combiner check's to report
            if per_step > 1:
                raise ValueError(f"key 'weighting': the combiner takes {per_step} batches per "
                                 "step, which a loss weighting does not support; remove one")
        if self.exit_groups is not None:
            # per-exit groups exist once the model's depth is known: the weighting is built on
            # them then, before training (stages.attach_weighting); its name is checked now
            try:
                WEIGHTINGS.get(WEIGHTINGS.split(self.weighting, where="key 'weighting'")[0])
            except ConfigError as error:
                message = str(error)
                raise ValueError(message if message.startswith("key 'weighting'")
                                 else f"key 'weighting': {message}") from None
            return self
        groups = list(self.joint_groups())
        if len(groups) < 2:
            raise ValueError(f"key 'weighting': mode {self.mode} trains the single loss group "
                             f"{groups[0]!r}, so there is nothing to weigh; remove the key or "
                             "split the loss with 'loss_groups'")
        try:
            WEIGHTINGS.build(self.weighting, groups, where="key 'weighting'")
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self

    @model_validator(mode="after")
    def _conditioning_has_a_ray(self) -> MultiExitGlueConfig:
        if not self.preference_conditioning:
            return self
        from gradsurg.weightings.scalarizers import PreferenceScalarization

        name, options = (WEIGHTINGS.split(self.weighting, where="key 'weighting'")
                         if self.weighting is not None else (None, {}))
        if name is None or not issubclass(WEIGHTINGS.get(name), PreferenceScalarization):
            raise ValueError("key 'preference_conditioning': the model is conditioned on the "
                             "preference ray of weighting cosmos or pbi, and this recipe's "
                             f"weighting is {name or 'none'}; set weighting: {{name: cosmos, "
                             "resample: true}} or remove the key")
        if options.get("resample") is not True:
            raise ValueError("key 'preference_conditioning': weighting "
                             f"{name}'s preference is fixed, so the model would be fed the "
                             "same ray every step and learn nothing from it; set resample: "
                             "true in the weighting or remove the key")
        return self

    @model_validator(mode="after")
    def _groups_fit_the_mode(self) -> MultiExitGlueConfig:
        if self.exit_groups is not None:
            return self._check_exit_groups()
        if not self.mode_spec.one_stage:
            if self.combiner is not None:
                raise ValueError(f"key 'combiner': mode {self.mode} trains one loss group per "
                                 "stage, so there is nothing to combine; remove the key")
            if self.loss_groups is not None:
                raise ValueError(f"key 'loss_groups': mode {self.mode}'s stages have fixed "
                                 "loss groups; remove the key or use a one-stage mode")
            return self
        if self.combiner is None:
            return self
        groups = self.joint_groups()
        if len(groups) < 2:
            raise ValueError(f"key 'combiner': mode {self.mode} trains the single loss group "
                             f"{next(iter(groups))!r}, so there is nothing to combine; remove "
                             "the key or split the loss with 'loss_groups'")
        unknown = [g for g in self.combiner_for_checks().group_names() if g not in groups]
        if unknown:
            raise ValueError(f"key 'combiner': loss group {unknown[0]!r} does not exist in mode "
                             f"{self.mode}; allowed: {', '.join(groups)}")
        return self

    @model_validator(mode="after")
    def _conflict_blocks_have_pairs(self) -> MultiExitGlueConfig:
        if self.conflict_blocks is None:
            return self
        if not self.mode_spec.one_stage:
            raise ValueError(f"key 'conflict_blocks': mode {self.mode} trains one loss group "
                             "per stage, so no two groups' gradients ever meet; use a "
                             "one-stage mode with two or more loss groups")
        if self.exit_groups is None and len(self.joint_groups()) < 2:
            raise ValueError(f"key 'conflict_blocks': mode {self.mode} trains the single loss "
                             f"group {next(iter(self.joint_groups()))!r}, so there is no pair "
                             "to compare; split the loss with 'loss_groups' or 'exit_groups'")
        return self

    @model_validator(mode="after")
    def _selection_and_evaluation_work(self) -> MultiExitGlueConfig:
        """Checked now, not after training: an empty surgery selection, an unusable sweep."""
        from gradsurg.programs.multiexit_glue.checks import check_evaluation_settings

        if self.include is not None and not self.include:
            raise ValueError("key 'include': an empty list selects no parameter, so surgery "
                             "would do nothing; use null for the default selection")
        try:
            self._exit_policy_setting = check_evaluation_settings(self.exit_policy, self.sweep)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self

    def _check_exit_groups(self) -> MultiExitGlueConfig:
        """Per-exit groups: the modes the table allows, not with `loss_groups`; romebert's default
        projection (final vs sd) has no such groups, so it needs a combiner; a combiner may
        name groups `exitN` only (N is checked against the model's depth before training)."""
        if not self.mode_spec.per_exit_groups:
            allowed = " or ".join(name for name, mode in MODES.items() if mode.per_exit_groups)
            raise ValueError(f"key 'exit_groups': mode {self.mode} has no per-exit form; use "
                             f"{allowed}")
        if self.loss_groups is not None:
            raise ValueError("keys 'exit_groups' and 'loss_groups' both set the loss groups; "
                             "keep one")
        if self.combiner is None:
            if self.mode_spec.default_combiner != "sum":  # it names groups exitN replace
                raise ValueError(f"key 'exit_groups' needs a 'combiner' in mode {self.mode} "
                                 "(its default projects final against sd, groups that per-exit "
                                 "groups replace), e.g. combiner: upgrad")
            return self
        for name in self.combiner_for_checks().group_names():
            if re.fullmatch(r"exit[1-9][0-9]*", name) is None:
                raise ValueError(f"key 'combiner': loss group {name!r} does not exist with "
                                 "exit_groups; allowed: exit1 .. exitL")
        return self

    def combiner_for_checks(self) -> Any:
        """The recipe's combiner built once for validation's checks across keys (its group
        names, batches per step); the run trains with its own, built in setup."""
        if self._checked_combiner is None:
            self._checked_combiner = COMBINERS.build(self.combiner, where="combiner")
        return self._checked_combiner

    def joint_groups(self, num_exits: int | None = None) -> dict[str, str | dict[str, Any]]:
        """A one-stage mode's loss groups: per-exit groups (which need the model's
        `num_exits`), `loss_groups`, else the mode's own."""
        if self.exit_groups is not None:
            if num_exits is None:
                raise ValueError("per-exit loss groups need the model's number of exits")
            return per_exit_groups(self.exit_groups, num_exits)
        if self.loss_groups is not None:
            return dict(self.loss_groups)
        return dict(self.mode_spec.stages[0].groups)

    def has_learned_terms(self) -> bool:
        """Whether a loss term of some stage has parameters (ELBERT's exit weights); per-exit
        groups have none."""
        if self.exit_groups is not None:
            return False  # each exit's task loss or SD share: nothing learned
        stages = ([self.joint_groups()] if self.mode_spec.one_stage
                  else [stage.groups for stage in self.mode_spec.stages])
        for groups in stages:
            for group, spec in groups.items():
                term = LOSS_TERMS.build(spec, 2, where=f"loss group {group!r}")
                if any(True for _ in term.parameters()):
                    return True
        return False

    def learned_terms_lr(self) -> float:
        """`exit_weights_lr`, else ELBERT's own: its code trains W at 1e-2 in a group of its
        own (the model's lr, 2e-5 to 5e-5, leaves sigmoid(W) at 0.5 +- 0.002 after an epoch)."""
        return DEFAULT_EXIT_WEIGHTS_LR if self.exit_weights_lr is None else self.exit_weights_lr

    @property
    def task_spec(self) -> TaskSpec:
        """The recipe's task, resolved once when the recipe was validated."""
        spec: TaskSpec = self._task_spec
        return spec

    @property
    def exit_policy_setting(self) -> ExitPolicySetting:
        """The recipe's `exit_policy` (built once, when the recipe was validated) and `sweep`."""
        setting: ExitPolicySetting = self._exit_policy_setting
        return setting

    @property
    def mode_spec(self) -> ModeSpec:
        """The mode's row of the modes table."""
        return MODES[self.mode]

    def combiner_spec(self) -> str | dict[str, Any]:
        """The recipe's combiner, else the mode's default where its groups exist, else sum."""
        if self.combiner is not None:
            return self.combiner
        default = self.mode_spec.default_combiner
        named = COMBINERS.build(default, where="combiner").group_names()
        if (self.exit_groups is None and self.mode_spec.one_stage
                and set(named) <= set(self.joint_groups())):
            return default
        return "sum"


def _buildable(registry: Registry[Any], value: Any, *, where: str) -> Any:
    """`value` unchanged if `registry` can build it; pydantic reports the ConfigError."""
    try:
        registry.build(value, where=where)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return value
