"""`Surgery`: per-group gradients collected in `backward`, final in `.grad` when it returns.

    surgery = Surgery(model, optimizer, "project", ...)
    surgery.backward({"final": loss_final, "sd": loss_sd})   # .grad now holds the result
    optimizer.step()
    optimizer.zero_grad()

The step's last `backward` (the `accumulation_steps`-th, or the one called with
`last_micro_batch=True`) runs the pipeline: all-reduce -> unscale -> combine -> clip ->
non-finite rule. So everything that reads `.grad` before the step (your clipping,
`GradScaler.unscale_`, Trainer, Lightning, Accelerate, a closure optimizer) sees the final
gradient. An optimizer step taken while micro-batches wait uncombined is refused.

With `weighting=...` the loss weighting belongs to the training, not to the model: `backward`
weighs the raw losses before collecting them, the attached optimizer's step updates it (not on
a skipped step), `surgery.epoch_end()` ends its epochs, and its state is in `state_dict()`.
A learned weighting's parameters (`surgery.parameters()`) must be in the optimizer.

A combiner that needs several independent batches per step (`batches_per_step` > 1:
`sdmgrad`, `modo`, whose weights come from two batches' gradients and whose direction from a
third's) takes one `{group: loss}` mapping per batch in each call,
`surgery.backward([losses_1, losses_2, losses_3])`: the three forward graphs are alive
together, and the rows are collected as groups `<group>@1`, `<group>@2`, ... (one matrix,
so all-reduce, unscaling, clipping and the non-finite rule work unchanged; a bad row is named
with its batch). Parameters outside the selection get the mean over the batches of their plain
sums, `losses` the mean over the batches. One call per step, not one per batch: the collector
would otherwise have to tell a batch from a micro-batch, and a forgotten batch would look
like a finished step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsurg.clipping import Clip
from gradsurg.combiners import COMBINERS, Combiner
from gradsurg.combiners.blocks import BlockGramians, Blocks
from gradsurg.combiners.stage import Combine
from gradsurg.distributed import SINGLE_PROCESS, AllReduce, DataParallel
from gradsurg.engines import DDPTakeover, fsdp_mesh, refuse_fsdp1, unwrap_ddp
from gradsurg.errors import ConfigError, GradsurgError, RanksError
from gradsurg.gradient_matrix import BACKWARD_MODES, BackwardMode, resolve_mode
from gradsurg.gradients import GradientCollector
from gradsurg.nonfinite import NonFinite, NonFiniteRule
from gradsurg.params import trainable_parameters
from gradsurg.pipeline import Pipeline, Stage
from gradsurg.precision import LossScale, Unscale
from gradsurg.registry import Spec
from gradsurg.weightings import WEIGHTINGS, LossWeighting
from gradsurg.weightings.loop import Recompute, WeightingStep

Losses = Mapping[str, Tensor] | Sequence[tuple[str, Tensor]]

#: The weighting's name among the training parts and in `Surgery.state_dict()`.
WEIGHTING_KEY = "loss_weighting"


class Surgery:
    """One gradient row per loss group, combined into `.grad` at the step's last backward.

    Args:
        model: the module whose trainable parameters are trained.
        optimizer: optional; when given, a step it takes while micro-batches wait uncombined
            is refused (`attach` adds one later, e.g. once a framework has built it).
        combiner: a combiner, its registered name, or a `{name: ..., **options}` mapping.
            It is bound to the loss groups' names at the first `backward` (again only if they
            change), so its options' group names become row indices once.
        include, exclude: name globs choosing the parameters to operate on. Default: every
            trainable parameter that more than one group can move (decided on the first
            micro-batch, zero-initialised adapters included; `gradsurg.selection`), minus
            `exclude`; `selected_names` reads it back. All others receive the plain sum.
        mode: `sequential`, `batched` or `auto` (batched on accelerators, sequential on CPU).
        accumulation_steps: micro-batches per optimizer step; the last one combines.
        max_grad_norm: clip the combined gradient (all trainable parameters) to this norm.
        diagnostics_every: with fixed-weight combiners (sum, mean) the matrix is skipped (one
            backward of the summed loss gives the same gradient); set N to still build it every
            N-th step for diagnostics (and `conflict_blocks`). Other combiners always build it.
        conflict_blocks: `per_layer` or a list of parameter name globs (as `blockwise`'s
            `blocks`): on every step that builds the matrix, log per block and pair of groups
            reaching it `cosine/<block>/<a>/<b>` and `conflict/<block>/<a>/<b>` (1 when the
            cosine is negative), the keys `blockwise` logs, for any combiner and without
            changing the update, so any run can show its conflict map. Cost: each block's
            Gramian, one more pass over the matrix. With `sum` or `mean` it needs
            `diagnostics_every` (the steps that build the matrix).
        reuse_buffer: keep the `[k, n]` matrix's memory between steps instead of allocating
            (and page-faulting) it anew.
        nonfinite: `skip` (default), `raise`, `scaler` (you drive a torch.amp.GradScaler) or
            `ignore`; see `gradsurg.nonfinite`.
        max_nonfinite_steps: with `skip`, this many skipped steps in a row raise.
        data_parallel: several processes: each `backward` weights its losses by this rank's
            share of the global batch and the step all-reduces the matrix before combining.
            Default: a DDP-wrapped model's process group (DDP's own all-reduce is switched
            off: gradsurg reduces the rows), an FSDP2 model's mesh (each rank keeps its shard
            of every row), or an initialized process group; several processes without one
            are refused.
        loss_scale: gradsurg's own fp16 loss scaling (scaled before backward, unscaled before
            combining, backed off on skipped steps).
        weighting: a loss weighting (`gradsurg.weightings`), its registered name or a
            `{name: ..., **options}` mapping, applied to the raw losses in `backward`. A name
            is built at the first `backward`, once the groups are known; a weighting that
            learns parameters must be built by you (`WEIGHTINGS.build(spec, groups)`) so its
            parameters can reach the optimizer before the first step.
        training_parts: `{name: module}` trained with the model but not part of it (e.g. loss
            terms that learn): their parameters are collected, combined, clipped and reduced
            like the model's, named `<name>.<parameter>`. The weighting joins them as
            `loss_weighting`; `training_parts` reads them all back.

    After each combination `losses` holds every group's loss over the (global) batch and
    `diagnostics` the step's facts (README, "Diagnostics"); both stay readable until the next.
    """

    def __init__(
        self,
        model: nn.Module | nn.parallel.DistributedDataParallel,
        optimizer: Optimizer | None,
        combiner: Combiner | Spec,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        mode: BackwardMode = "auto",
        accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        diagnostics_every: int | None = None,
        conflict_blocks: Blocks | None = None,
        reuse_buffer: bool = True,
        nonfinite: NonFinite = "skip",
        max_nonfinite_steps: int = 10,
        data_parallel: DataParallel | None = None,
        loss_scale: LossScale | None = None,
        weighting: LossWeighting | Spec | None = None,
        training_parts: Mapping[str, nn.Module] | None = None,
    ) -> None:
        if mode not in BACKWARD_MODES:
            raise ConfigError(f"mode {mode!r} is not one of {list(BACKWARD_MODES)}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) \
                or accumulation_steps < 1:
            raise ConfigError(f"accumulation_steps must be an integer >= 1, got "
                              f"{accumulation_steps!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if diagnostics_every is not None and diagnostics_every < 1:
            raise ConfigError(f"diagnostics_every must be >= 1, got {diagnostics_every}")
        if loss_scale is not None and nonfinite != "skip":
            raise ConfigError(f"loss scaling needs nonfinite='skip' (got {nonfinite!r}): an "
                              "overflowing fp16 step must be skipped, not applied or fatal")
        module, ddp = unwrap_ddp(model)
        refuse_fsdp1(module)
        self.model = module
        self.combiner: Combiner = COMBINERS.build(combiner, where="combiner")
        if weighting is not None and self.combiner.batches_per_step > 1:
            raise ConfigError(
                f"combiner {self.combiner.name!r} takes {self.combiner.batches_per_step} "
                "batches per step, which a loss weighting does not support (it would see "
                "each step's losses several times); drop the weighting or use another combiner")
        self._ddp: DDPTakeover | None = None
        self._engine_checked: nn.Module | None = None
        self.accumulation_steps = accumulation_steps
        self.diagnostics_every = diagnostics_every
        self.conflict_blocks = (None if conflict_blocks is None
                                else BlockGramians(conflict_blocks, where="conflict_blocks"))
        self.loss_scale = loss_scale
        self.max_grad_norm = max_grad_norm
        self.mode: BackwardMode = mode
        self.nonfinite = NonFiniteRule(nonfinite, max_in_a_row=max_nonfinite_steps)
        self.collector = GradientCollector(
            module, include=include, exclude=exclude, mode=mode, reuse_buffer=reuse_buffer,
            data_parallel=SINGLE_PROCESS, check_finite=nonfinite != "ignore")
        #: Modules trained with the model but not part of it, the weighting as `loss_weighting`.
        self.training_parts = nn.ModuleDict(dict(training_parts or {}))
        if WEIGHTING_KEY in self.training_parts:
            raise ConfigError(f"training_parts: {WEIGHTING_KEY!r} is the weighting's own name; "
                              "pass the weighting as Surgery(..., weighting=...)")
        self._add_trainable(self.training_parts)
        self.weighting: LossWeighting | None = None
        self._weighting_spec: Spec | None = None
        self._weighting_step: WeightingStep | None = None
        self._weighting_state: Mapping[str, Any] | None = None  # loaded before it was built
        self._optimizers: list[Optimizer] = []  # attached: a learned part must be in one
        if isinstance(weighting, LossWeighting):
            self._use_weighting(weighting)
        elif weighting is not None:
            name, _ = WEIGHTINGS.split(weighting, where="weighting")
            try:
                WEIGHTINGS.get(name)  # an unknown name fails here, not at the first step
            except ConfigError as error:
                raise ConfigError(f"weighting: {error}") from None
            self._weighting_spec = weighting
        if ddp is not None:
            self.use_ddp(ddp, data_parallel=data_parallel)
        else:
            self._join(data_parallel if data_parallel is not None else self._engine_of(module))
        #: The loss of each group at the last combined step, over the global batch.
        self.losses: dict[str, float] = {}
        #: The last combined step's facts (norms, cosines, the combiner's own); see README.
        self.diagnostics: dict[str, float] = {}
        self.steps = 0
        self._hooks: list[Any] = []
        if optimizer is not None:
            self.attach(optimizer)

    # ---- public API -------------------------------------------------------------------------

    @property
    def selected_names(self) -> list[str]:
        """Names of the parameters the combiner operates on (known after the first backward)."""
        layout = self.collector.layout
        return list(layout.names) if layout else []

    @property
    def skipped_steps(self) -> int:
        return self.nonfinite.skipped_steps

    @property
    def nonfinite_in_a_row(self) -> int:
        return self.nonfinite.in_a_row

    @property
    def pending_micro_batches(self) -> int:
        """Micro-batches collected since the last combination."""
        return self.collector.micro_batches

    def backward(self, losses: Losses | Sequence[Losses], *,
                 share: float | Sequence[float] | None = None,
                 last_micro_batch: bool | None = None, recompute: Recompute | None = None,
                 scale: Callable[[Tensor], Tensor] | None = None) -> None:
        """Backward every group's loss for one micro-batch; the step's last one combines.

        `share`: with data parallelism, this rank's fraction of the global batch's rows (the
        losses are means over the local rows); default: an equal split. `last_micro_batch`:
        say whether this micro-batch ends the step (frameworks that know, e.g. a short last
        accumulation window); default: after `accumulation_steps` calls. `recompute`: evaluates
        this micro-batch's losses again, for a weighting that needs them after the step
        (FAMO). `scale`: applied to each (weighted) loss just before the backward, e.g. a
        framework's accumulation factor and GradScaler; the weighting sees the losses unscaled.

        A combiner with `batches_per_step` b > 1 takes a list of b `{group: loss}` mappings,
        one per independent batch, in every call (the module docstring says why); `share` may
        then be a list of b shares, one per batch.
        """
        groups, names = self._batch_rows(losses)
        weight: float | list[float] | None = None
        if isinstance(share, Sequence):
            need = self.combiner.batches_per_step
            if len(share) != need or need == 1:
                raise GradsurgError(f"share: a list of {len(share)} shares, one per batch, "
                                    f"but combiner {self.combiner.name!r} takes {need} "
                                    "batch(es) per step")
            if self.data_parallel.enabled:
                weight = [float(part) for part in share for _ in names]
        elif self.data_parallel.enabled:
            weight = 1 / self.data_parallel.world_size if share is None else share
        if self._weighting_spec is not None and self.weighting is None:
            self._build_weighting(list(groups))
        if self._weighting_step is not None or self._optimizers:
            self._check_optimizer()
        if self._weighting_step is not None:
            assert not isinstance(share, Sequence)  # a weighting takes one batch per step
            groups = self._weighting_step.weigh(groups, share=share, recompute=recompute,
                                                parallel=self.data_parallel)
        if scale is not None:
            groups = {name: scale(loss) for name, loss in groups.items()}
        if names != self.combiner.names:  # the first step, or the groups changed
            self.combiner.bind(names)
            self._check_conflict_blocks(names)
        weights = self.combiner.linear_weights()
        try:
            self.collector.add(groups, weight=weight, scale=self.loss_scale,
                               shortcut_weight=self._shortcut_weight(weights),
                               needs_shared=weights is None,
                               batches=self.combiner.batches_per_step)
        except RanksError:
            raise  # every rank knows already
        except Exception as error:
            if self._weighting_step is not None:
                self._weighting_step.discard()
            self._tell_other_ranks(groups, error)
            raise
        if self._ddp is not None:
            self._ddp.after_backward()
        done = (self.collector.micro_batches >= self.accumulation_steps
                if last_micro_batch is None else last_micro_batch)
        if done:
            self.combine()

    def combine(self) -> None:
        """Run the pipeline on what was collected: `.grad` then holds the final gradient.

        `backward` calls it on the step's last micro-batch; call it yourself to end a step
        early (e.g. a last, short accumulation window)."""
        if not self.collector.pending:
            raise GradsurgError("surgery.combine(): nothing collected since the last step; "
                                "call surgery.backward(...) first")
        step = self.collector.take()
        step.batches = self.combiner.batches_per_step
        self.steps += 1
        step.index = self.steps
        try:
            self.pipeline.run(step)
        except BaseException:
            if self._weighting_step is not None:
                self._weighting_step.discard()
            raise
        finally:
            self.losses = batch_means({name: float(value) for name, value in step.losses.items()},
                                      step.batches)
            self.diagnostics = step.diagnostics
        if self._weighting_step is not None:  # the pipeline's own decision, as Unscale reads it
            self._weighting_step.close(self.data_parallel, skipped=step.skipped)

    def epoch_end(self) -> None:
        """The end of a training epoch: the weighting's `epoch_end` (DWA's epoch means)."""
        if self.weighting is not None:
            self.weighting.epoch_end()

    def parameters(self) -> list[nn.Parameter]:
        """The training parts' trainable parameters (a learned weighting's, learned loss
        terms'): give them to the optimizer with the model's."""
        return [p for _, p in trainable_parameters(self.training_parts)]

    def log_values(self) -> dict[str, float]:
        """The last step's losses as a training log holds them: `loss/<group>`; with a
        weighting, `loss/<group>` are the raw losses, `weighted_loss/<group>` what the
        combiner saw and `weighting/<fact>` the weighting's state after the step."""
        values = {f"loss/{name}": value for name, value in self.losses.items()}
        if self._weighting_step is None:
            return values
        values = {f"weighted_{key}": value for key, value in values.items()}
        values.update(self._weighting_step.logged())
        return values

    def discard(self) -> None:
        """Drop the micro-batches collected since the last combination."""
        self.collector.discard()
        if self._weighting_step is not None:
            self._weighting_step.discard()

    def use_engine(self, model: nn.Module) -> None:
        """What a framework's training step runs the forward through (Trainer, Lightning):
        a DDP wrapper is taken over (`use_ddp`); FSDP1, or FSDP2 sharding applied after the
        Surgery was built (its parameters are new objects), is refused with what works."""
        if model is self._engine_checked:
            return  # a framework calls it every step; the wrapper does not change
        refuse_fsdp1(model)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self.use_ddp(model)
            self._engine_checked = model
            return
        known = {id(p) for _, p in self.collector.trainable}
        if any(id(p) not in known for p in self.model.parameters() if p.requires_grad):
            raise ConfigError(
                "the model's parameters were replaced after the Surgery was built (e.g. "
                "sharded by FSDP2 inside a framework); build the Surgery from the model as "
                "it trains (FSDP2 in your own loop), or use DDP")
        self._engine_checked = model

    def use_ddp(self, wrapper: nn.parallel.DistributedDataParallel, *,
                data_parallel: DataParallel | None = None) -> None:
        """The model's forward runs through this DistributedDataParallel wrapper.

        Its gradient all-reduce is switched off for good (as `no_sync()` does for a while)
        and the rows are reduced once per step on its process group instead. Frameworks that
        wrap the model after the Surgery exists (Trainer, Lightning) call this before the
        first forward; `Surgery(ddp_model, ...)` calls it itself.
        """
        if not isinstance(wrapper, nn.parallel.DistributedDataParallel):
            raise ConfigError(f"use_ddp() takes a DistributedDataParallel wrapper, got "
                              f"{type(wrapper).__name__}")
        if self._ddp is not None and self._ddp.wrapper is wrapper:
            return
        if not any(module is self.model for module in wrapper.module.modules()):
            raise ConfigError("this DistributedDataParallel wrapper does not hold the model "
                              "the Surgery was built for; pass the wrapper of that model")
        self._ddp = DDPTakeover(wrapper)
        self._join(data_parallel if data_parallel is not None
                   else DataParallel.of_group(wrapper.process_group))

    def attach(self, optimizer: Optimizer) -> None:
        """Refuse `optimizer.step()` while micro-batches wait uncombined (before the step, or,
        for a closure optimizer whose closure runs inside the step, right after it).
        A wrapper holding the real optimizer as `.optimizer` (Accelerate, Lightning) is
        unwrapped."""
        inner = getattr(optimizer, "optimizer", None)
        if isinstance(inner, Optimizer):
            optimizer = inner
        self.nonfinite.extra_parameters = [p for group in optimizer.param_groups
                                           for p in group["params"]]
        self._optimizers.append(optimizer)
        self._hooks.append(optimizer.register_step_pre_hook(self._before_step))
        self._hooks.append(optimizer.register_step_post_hook(self._after_step))

    def remove(self) -> None:
        """Detach from the optimizer(s) (and hand a DDP wrapper its all-reduce back)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._ddp is not None:
            self._ddp.release()
            self._ddp = None

    def state_dict(self) -> dict[str, Any]:
        """Steps, the stages' state and the weighting's (buffers and learned parameters)."""
        state = {"steps": self.steps, **self.pipeline.state_dict()}
        if self.weighting is not None:
            state[WEIGHTING_KEY] = self.weighting.state_dict()
        elif self._weighting_state is not None:  # loaded, not yet built: kept as it came
            state[WEIGHTING_KEY] = self._weighting_state
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """A `state_dict()` of a Surgery with the same combiner and weighting; anything else
        is refused in one line."""
        if not isinstance(state, Mapping) or "steps" not in state:
            raise GradsurgError("surgery state: not a Surgery.state_dict() (no 'steps')")
        wanted = self.weighting is not None or self._weighting_spec is not None
        if wanted != (WEIGHTING_KEY in state):
            raise GradsurgError(
                "surgery state: written by a Surgery " + ("without" if wanted else "with")
                + " a weighting, loaded into one " + ("with" if wanted else "without")
                + "; build the Surgery as the one that wrote it")
        self.pipeline.load_state_dict(state)
        self.steps = int(state["steps"])
        if self.weighting is not None:
            self.weighting.load_state_dict(state[WEIGHTING_KEY])
        elif wanted:
            self._weighting_state = state[WEIGHTING_KEY]

    # ---- internals --------------------------------------------------------------------------

    def _batch_rows(self, losses: Losses | Sequence[Losses]) -> tuple[dict[str, Tensor],
                                                                       list[str]]:
        """`({row name: loss}, the groups)`: one batch's groups as they are; b batches'
        (a multi-batch combiner's) as `<group>@1`, ..., `<group>@b`, batch-major. Too few or
        too many batches for the combiner are refused in one line."""
        need = self.combiner.batches_per_step
        several = (isinstance(losses, Sequence) and not isinstance(losses, str)
                   and len(losses) > 0 and all(isinstance(item, Mapping) for item in losses))
        name = self.combiner.name or type(self.combiner).__name__
        if need == 1:
            if several:
                raise GradsurgError(
                    f"surgery.backward() got {len(losses)} batches' losses, but combiner "
                    f"{name!r} takes one batch per step; pass one {{group: loss}} mapping "
                    "(only a combiner with batches_per_step > 1, e.g. sdmgrad or modo, takes "
                    "a list of them)")
            groups = _as_mapping(losses)  # type: ignore[arg-type]
            return groups, list(groups)
        if not several or len(losses) != need:
            got = f"{len(losses)} batches" if several else "one batch"
            raise GradsurgError(
                f"combiner {name!r} needs {need} independent batches per step (its weights "
                f"come from two batches' gradients, its direction from a third's), got {got}; "
                f"call surgery.backward([losses_1, ..., losses_{need}]), one {{group: loss}} "
                "mapping per batch")
        batches = [_as_mapping(item) for item in losses]  # type: ignore[arg-type]
        names = list(batches[0])
        for index, batch in enumerate(batches[1:], start=2):
            if list(batch) != names:
                raise GradsurgError(f"batch {index} gives the loss groups {list(batch)}, "
                                    f"batch 1 {names}; every batch must give the same groups "
                                    "in the same order")
        rows = {f"{group}@{index}": loss for index, batch in enumerate(batches, start=1)
                for group, loss in batch.items()}
        return rows, names

    def _use_weighting(self, weighting: LossWeighting) -> None:
        self.weighting = weighting
        self._weighting_step = WeightingStep(weighting)
        self.training_parts[WEIGHTING_KEY] = weighting
        self._add_trainable(weighting, prefix=f"{WEIGHTING_KEY}.")
        if self._weighting_state is not None:
            weighting.load_state_dict(self._weighting_state)
            self._weighting_state = None

    def _build_weighting(self, groups: list[str]) -> None:
        weighting = WEIGHTINGS.build(self._weighting_spec, groups, where="weighting")
        device = next((p.device for _, p in self.collector.trainable), None)
        self._use_weighting(weighting.to(device) if device is not None else weighting)

    def _add_trainable(self, module: nn.Module, *, prefix: str = "") -> None:
        """The module's trainable parameters join the model's (collected, clipped, reduced);
        ones the model holds already (a weighting assigned to a LightningModule) once."""
        known = {id(p) for _, p in self.collector.trainable}
        self.collector.trainable.extend((prefix + name, p)
                                        for name, p in trainable_parameters(module)
                                        if id(p) not in known)

    def _check_optimizer(self) -> None:
        """A weighting updates after the attached optimizer's step, and its learned
        parameters must be among that optimizer's: refused in one line otherwise."""
        weighting = self.weighting
        name = (weighting.name or type(weighting).__name__) if weighting else "training_parts"
        if not self._optimizers:
            raise ConfigError(f"weighting {name!r} updates after optimizer.step(): pass the "
                              "optimizer to Surgery(model, optimizer, ...) or call "
                              "surgery.attach(optimizer)")
        held = {id(p) for optimizer in self._optimizers for group in optimizer.param_groups
                for p in group["params"]}
        if any(id(p) not in held for p in self.parameters()):
            raise ConfigError(
                f"{name!r}: the training parts learn parameters that no optimizer param group "
                "holds, so they would never train; add them: "
                "optimizer.add_param_group({'params': surgery.parameters()}) (a weighting given "
                "by name: build it first, WEIGHTINGS.build(spec, groups))")

    def _tell_other_ranks(self, groups: Mapping[str, Tensor], error: Exception) -> None:
        """This rank's step failed: the other ranks learn it at their next agreement (the
        step's reduction) and stop too, instead of waiting for this rank. Under FSDP2 the
        engine's own collectives come first, so there the process group's timeout ends it."""
        if self.data_parallel.enabled and not self.data_parallel.sharded:
            self.data_parallel.agree(list(groups), failed=str(error))
            self.collector.discard()

    @staticmethod
    def _engine_of(module: nn.Module) -> DataParallel:
        """FSDP2's mesh when the trainable parameters are sharded, else `DataParallel.detect`."""
        mesh = fsdp_mesh([p for p in module.parameters() if p.requires_grad])
        if mesh is not None:
            return DataParallel.of_group(mesh.get_group(), sharded=True)
        return DataParallel.detect(module)

    def _join(self, data_parallel: DataParallel) -> None:
        """Reduce on `data_parallel`: the collector's weighting and the pipeline's stages."""
        if self.collector.pending:
            raise GradsurgError("the data parallelism changed while micro-batches wait "
                                "uncombined; call use_ddp() before the first backward")
        if data_parallel.sharded:
            if not self.combiner.exact_on_shards:
                raise ConfigError(
                    f"combiner {self.combiner.name!r} cannot run under FSDP2: "
                    f"{self.combiner.shard_refusal} Use DDP (Surgery(ddp_model, ...)), where "
                    "every combiner runs, or a Gramian-based combiner (README: Several "
                    "devices)")
            resolve_mode(self.mode, torch.device("cpu"), sharded=True)  # batched: refused
        self.data_parallel = data_parallel
        self.collector.data_parallel = data_parallel
        self.nonfinite.data_parallel = data_parallel
        stages: list[Stage] = []
        if data_parallel.enabled:
            stages.append(AllReduce(data_parallel))
        if self.loss_scale is not None:
            stages.append(Unscale(self.loss_scale))
        stages.append(Combine(self.combiner, data_parallel, blocks=self.conflict_blocks))
        if self.max_grad_norm is not None:
            stages.append(Clip(self.max_grad_norm, data_parallel))
        stages.append(self.nonfinite)
        self.pipeline = Pipeline(stages)

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if len(args) > 1 or kwargs.get("closure") is not None:  # args[0] is the optimizer
            self.nonfinite.in_closure_step = True  # its gradients are read inside the step
            return  # the closure's backward may complete the step: checked after it
        self._refuse_pending(optimizer, args, kwargs)
        self.nonfinite.before_optimizer_step(
            [p for group in optimizer.param_groups for p in group["params"]])

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.nonfinite.in_closure_step = False
        self._refuse_pending(optimizer, args, kwargs)
        if self._weighting_step is not None:
            self._weighting_step.update()  # after the step that was taken; none if skipped

    def _refuse_pending(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.collector.pending:
            count = self.collector.micro_batches
            raise GradsurgError(
                f"optimizer.step() after {count} of {self.accumulation_steps} micro-batch(es) "
                "of a step were collected but not combined, so .grad is not final; call "
                "surgery.backward for the rest, pass last_micro_batch=True on the last one, or "
                "call surgery.combine() before stepping")

    def _check_conflict_blocks(self, names: list[str]) -> None:
        """`conflict_blocks` that would never log a value is refused in one line."""
        if self.conflict_blocks is None:
            return
        if len(names) < 2:
            raise ConfigError(f"conflict_blocks: the step has {len(names)} loss group(s) "
                              f"{names}, so no pair of groups to compare; drop conflict_blocks")
        weights = self.combiner.linear_weights()
        if (self.diagnostics_every is None and weights is not None
                and len(set(weights)) == 1):
            raise ConfigError(
                f"conflict_blocks: combiner {self.combiner.name!r} never builds the gradient "
                "matrix (one backward of the summed loss gives its gradient), so no block "
                "would ever be measured; set diagnostics_every=N to build it every N-th step")

    def _shortcut_weight(self, weights: list[float] | None) -> float | None:
        """The one weight of a fixed, uniform-weight combiner (`weights`: its linear weights)
        when this step may skip the matrix (no diagnostics due), else None."""
        if weights is None or len(set(weights)) != 1:
            return None
        diagnose = (self.diagnostics_every is not None
                    and self.steps % self.diagnostics_every == 0)
        return None if diagnose else weights[0]


def batch_means(values: Mapping[str, float], batches: int) -> dict[str, float]:
    """Per-row values of a multi-batch step (`<group>@<batch>`) as each group's mean over the
    batches; one batch's as they are."""
    if batches == 1:
        return dict(values)
    groups = [name.rpartition("@")[0] for name in list(values)[: len(values) // batches]]
    return {group: sum(values[f"{group}@{b}"] for b in range(1, batches + 1)) / batches
            for group in groups}


def _as_mapping(losses: Losses) -> dict[str, Tensor]:
    """`{group: loss}`; a sequence of (name, loss) pairs may not repeat a name."""
    if isinstance(losses, Mapping):
        return dict(losses)
    pairs = list(losses)
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GradsurgError(f"loss group name(s) {repeated} given more than once; each group "
                            "is one row of the gradient matrix, so names must be unique")
    return dict(pairs)
