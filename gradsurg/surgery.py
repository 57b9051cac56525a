"""`Surgery`: per-group backward passes now, the combination at `optimizer.step()`.

    surgery = Surgery(model, optimizer, "project", ...)
    surgery.backward({"final": loss_final, "sd": loss_sd})   # any number of micro-batches
    optimizer.step()                                         # pre-hook combines, then steps
    optimizer.zero_grad()

The combiner runs in a step pre-hook, so LR schedulers and any `torch.optim.Optimizer` work
unchanged. Between `backward` and the step, the selected parameters' gradients live in the
matrix (their `.grad` is None); after the hook their `.grad` holds the combined gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsurg.combiners import CombinerSpec, build_combiner, gramian
from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.errors import ConfigError, GradsurgError, NonFiniteError
from gradsurg.jacobian import MODES, GradientMatrix, Mode, resolve_mode
from gradsurg.params import (
    FlatLayout,
    NamedParameters,
    match_patterns,
    reached_parameters,
    trainable_parameters,
)
from gradsurg.precision import LossScale

NonFinite = Literal["skip", "raise", "ignore"]


class Surgery:
    """Collects one gradient row per loss group and combines them before each optimizer step.

    Args:
        model: the module whose trainable parameters are trained.
        optimizer: any optimizer over (a superset of) those parameters.
        combiner: a combiner, its registered name, or a `{name: ..., **options}` mapping.
        include, exclude: name globs choosing the parameters to operate on. Default: every
            trainable parameter that more than one group reaches (found on the first backward),
            minus `exclude`. All others receive the plain sum of the group gradients.
        mode: `sequential`, `batched` or `auto` (batched on accelerators, sequential on CPU).
        max_grad_norm: clip the combined gradient (all trainable parameters) to this norm.
        diagnostics_every: with uniform-weight combiners (sum, mean) the matrix is skipped (one
            backward of the summed loss gives the same gradient); set N to still build it every
            N-th step for diagnostics. Other combiners always build it.
        reuse_buffer: keep the `[k, n]` matrix's memory between steps instead of allocating
            (and page-faulting) it anew: 5% of a step on a 2-core CPU in bench/core_step.py,
            with the same peak. False frees it after every step.
        nonfinite: what a NaN/inf loss or gradient does to the step. `skip` (default): the
            optimizer step changes nothing (every `.grad` is set to None, which torch's
            optimizers skip, weight decay and moments included), `skipped_steps` counts it and
            `diagnostics["nonfinite/skipped"]` is 1; `raise`: stop at once; `ignore`: no check
            (saves one pass over the gradients).
        max_nonfinite_steps: with `skip`, this many skipped steps in a row raise
            :class:`NonFiniteError` (a diverged run should stop, not idle).
        data_parallel: with several processes, each `backward` weights its losses by this
            rank's share of the global batch, and the step all-reduces the matrix (and the
            plain gradients, losses and non-finite flags) before combining, so every rank
            combines the global batch's matrix. Parameters must get gradients on every rank
            alike (the model's structure, not the data, decides which ones).
        loss_scale: fp16 loss scaling: losses are scaled before backward, the matrix and the
            other gradients unscaled before combining; a skipped step backs the scale off.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        combiner: CombinerSpec,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        mode: Mode = "auto",
        max_grad_norm: float | None = None,
        diagnostics_every: int | None = None,
        reuse_buffer: bool = True,
        nonfinite: NonFinite = "skip",
        max_nonfinite_steps: int = 10,
        data_parallel: DataParallel = SINGLE_PROCESS,
        loss_scale: LossScale | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {list(MODES)}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if diagnostics_every is not None and diagnostics_every < 1:
            raise ConfigError(f"diagnostics_every must be >= 1, got {diagnostics_every}")
        if nonfinite not in ("skip", "raise", "ignore"):
            raise ConfigError(f"nonfinite={nonfinite!r} is unknown; allowed: skip, raise, ignore")
        if max_nonfinite_steps < 1:
            raise ConfigError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        if loss_scale is not None and nonfinite != "skip":
            raise ConfigError(f"loss scaling needs nonfinite='skip' (got {nonfinite!r}): an "
                              "overflowing fp16 step must be skipped, not applied or fatal")
        self.model = model
        self.optimizer = optimizer
        self.combiner = build_combiner(combiner)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude or [])
        self.mode: Mode = mode
        self.max_grad_norm = max_grad_norm
        self.diagnostics_every = diagnostics_every
        self.reuse_buffer = reuse_buffer
        self.nonfinite: NonFinite = nonfinite
        self.max_nonfinite_steps = max_nonfinite_steps
        self.data_parallel = data_parallel
        self.loss_scale = loss_scale
        #: The loss of each group at the last step, over the global batch (for logging).
        self.losses: dict[str, float] = {}
        self._loss_sums: dict[str, Tensor] = {}
        self.steps = 0
        self.skipped_steps = 0
        self.nonfinite_in_a_row = 0
        self._bad_losses: dict[str, Tensor] = {}
        self.diagnostics: dict[str, float] = {}
        self._trainable: NamedParameters = trainable_parameters(model)
        if not self._trainable:
            raise ConfigError("the model has no trainable parameters")
        self._layout: FlatLayout | None = None
        self._outside: list[nn.Parameter] = []
        self._matrix: GradientMatrix | None = None
        self._pending_names: tuple[str, ...] | None = None
        self._shortcut_scale = 1.0
        self._buffer: Tensor | None = None
        self._hook = optimizer.register_step_pre_hook(self._before_step)

    # ---- public API -------------------------------------------------------------------------

    @property
    def selected_names(self) -> list[str]:
        """Names of the parameters the combiner operates on (known after the first backward)."""
        return list(self._layout.names) if self._layout else []

    def backward(self, losses: Mapping[str, Tensor], *, share: float | None = None) -> None:
        """Backward every group's loss; call once per micro-batch, then `optimizer.step()`.

        `share`: with data parallelism, this rank's fraction of the global batch's rows (the
        losses are means over the local rows); default: an equal split.
        """
        names = tuple(losses)
        values = [self._checked_loss(name, loss) for name, loss in losses.items()]
        if self.data_parallel.enabled:
            weight = 1 / self.data_parallel.world_size if share is None else share
            values = [value * weight for value in values]
        for name, value in zip(names, values):
            previous = self._loss_sums.get(name)
            detached = value.detach().float()
            self._loss_sums[name] = detached if previous is None else previous + detached
        if self.loss_scale is not None:
            values = [self.loss_scale.scale(value) for value in values]
        if not names:
            raise GradsurgError("surgery.backward() needs at least one loss group")
        if self._pending_names is not None and names != self._pending_names:
            raise GradsurgError(
                f"loss groups changed within one optimizer step: {list(self._pending_names)} "
                f"then {list(names)}"
            )
        self._pending_names = names
        if self.nonfinite != "ignore":
            for name, value in zip(names, values):  # flags stay on device: no sync here
                bad = ~torch.isfinite(value.detach())
                previous = self._bad_losses.get(name)
                self._bad_losses[name] = bad if previous is None else previous | bad
        if self._layout is None:
            self._choose_parameters(values)
        assert self._layout is not None
        weights = self.combiner.linear_weights(names)
        if weights is not None and len(set(weights)) == 1 and not self._diagnose_this_step():
            # g = w * sum_i g_i on the selected parameters and the plain sum elsewhere: one
            # backward pass of the summed loss, the selected gradients scaled at the step.
            live = [loss for loss in values if loss.requires_grad]
            if live:
                torch.autograd.backward(sum(live), inputs=[p for _, p in self._trainable])
            self._shortcut_scale = weights[0]
            return
        self._release_stale_grads()
        if self._matrix is None:
            self._matrix = GradientMatrix(names, self._layout, buffer=self._buffer)
            self._buffer = self._matrix.values if self.reuse_buffer else None
        self._matrix.accumulate(
            values, self._outside, mode=resolve_mode(self.mode, self._layout.device)
        )

    def combine(self) -> None:
        """Write the combined gradient into `.grad`; the optimizer's pre-hook calls this."""
        self.diagnostics = {}
        matrix, self._matrix = self._matrix, None
        self._pending_names = None
        if self.data_parallel.enabled:
            self._all_reduce(matrix)
        if self.loss_scale is not None:
            self._unscale(matrix)
        self.losses = {name: float(value) for name, value in self._loss_sums.items()}
        self._loss_sums = {}
        if matrix is not None and self._layout is not None:
            self._write_combined(matrix)
        elif self._shortcut_scale != 1.0 and self._layout is not None:
            for p in self._layout.params:
                if p.grad is not None:
                    p.grad.mul_(self._shortcut_scale)
        self._shortcut_scale = 1.0
        self.steps += 1
        params = [p for _, p in self._trainable if p.grad is not None]
        norm: Tensor | None = None
        if self.max_grad_norm is not None:
            # A non-finite norm scales the gradients to NaN; such a step is skipped below.
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            self.diagnostics["grad_norm/total"] = float(norm)
        bad_losses, self._bad_losses = self._bad_losses, {}
        if self.nonfinite == "ignore":
            return
        if norm is None:
            norm = _total_norm(params)
        bad = [name for name, flag in bad_losses.items() if bool(flag)]
        skipped = bool(bad) or not bool(torch.isfinite(norm))
        if self.loss_scale is not None:
            self.loss_scale.update(skipped=skipped)
        if skipped:
            self._skip_step(bad)
        else:
            self.nonfinite_in_a_row = 0

    def discard(self) -> None:
        """Drop the gradients collected since the last step (e.g. after a skipped step)."""
        self._matrix = None
        self._pending_names = None
        self._shortcut_scale = 1.0
        self._bad_losses = {}
        self._loss_sums = {}

    def remove(self) -> None:
        """Detach from the optimizer."""
        self._hook.remove()

    def state_dict(self) -> dict[str, Any]:
        state = {"steps": self.steps, "skipped_steps": self.skipped_steps,
                 "nonfinite_in_a_row": self.nonfinite_in_a_row,
                 "combiner": self.combiner.state_dict()}
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        self.combiner.load_state_dict(dict(state["combiner"]))
        if self.loss_scale is not None and "loss_scale" in state:
            self.loss_scale.load_state_dict(dict(state["loss_scale"]))

    # ---- internals --------------------------------------------------------------------------

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.combine()

    def _skip_step(self, bad_losses: Sequence[str]) -> None:
        cause = (f"loss group(s) {', '.join(bad_losses)} not finite" if bad_losses
                 else "gradient not finite")
        if self.nonfinite == "raise":
            raise NonFiniteError(f"optimizer step {self.steps}: {cause}")
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # torch optimizers leave parameters without gradients untouched
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        self.diagnostics["nonfinite/skipped"] = 1.0
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} optimizer steps in a row skipped (last: step "
                f"{self.steps}, {cause}); stopping. Lower the learning rate or check the data")

    def _all_reduce(self, matrix: GradientMatrix | None) -> None:
        """Sum over ranks: the matrix in place (one call), then one flat buffer holding the
        other gradients, the share-weighted losses and the non-finite flags."""
        if matrix is not None:
            self.data_parallel.all_reduce_(matrix.values)
            plain = self._outside
        else:
            plain = [p for _, p in self._trainable]
        grads = [p.grad for p in plain if p.grad is not None]
        names = list(self._loss_sums)
        dtype = grads[0].dtype if grads else torch.float32
        device = grads[0].device if grads else self._layout.device if self._layout else None
        extras = [self._loss_sums[name].reshape(1) for name in names]
        extras += [self._bad_losses[name].reshape(1) for name in names if name in self._bad_losses]
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [x.to(device=device, dtype=dtype) for x in extras])
        self.data_parallel.all_reduce_(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        for name in names:
            self._loss_sums[name] = flat[offset].float()
            offset += 1
        for name in names:
            if name in self._bad_losses:
                self._bad_losses[name] = flat[offset] > 0
                offset += 1

    def _unscale(self, matrix: GradientMatrix | None) -> None:
        """Divide the loss scale out of the matrix and the plain gradients, before combining."""
        assert self.loss_scale is not None
        inverse = 1.0 / self.loss_scale.value
        plain = self._outside if matrix is not None else [p for _, p in self._trainable]
        if matrix is not None:
            matrix.values.mul_(inverse)
        grads = [p.grad for p in plain if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, inverse)

    def _diagnose_this_step(self) -> bool:
        return self.diagnostics_every is not None and self.steps % self.diagnostics_every == 0

    def _checked_loss(self, name: str, loss: Tensor) -> Tensor:
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise GradsurgError(f"loss group {name!r} must be a scalar tensor")
        return loss.reshape(())

    def _choose_parameters(self, losses: Sequence[Tensor]) -> None:
        if self.include is not None:
            selected = match_patterns(self._trainable, include=self.include, exclude=self.exclude)
        else:
            params = [p for _, p in self._trainable]
            counts: dict[int, int] = {}
            for loss in losses:
                for pid in reached_parameters(loss, params):
                    counts[pid] = counts.get(pid, 0) + 1
            candidates = match_patterns(self._trainable, exclude=self.exclude)
            selected = [(n, p) for n, p in candidates if counts.get(id(p), 0) > 1]
        self._layout = FlatLayout.of(selected)
        chosen = {id(p) for _, p in selected}
        self._outside = [p for _, p in self._trainable if id(p) not in chosen]

    def _write_combined(self, matrix: GradientMatrix) -> None:
        layout = self._layout
        assert layout is not None
        names = list(matrix.names)
        gram = gramian(matrix.values)  # one pass; shared by the combiner and diagnostics
        combined = self.combiner(matrix.values, names, gram=gram)
        del matrix
        for p, view in zip(layout.params, layout.views(combined.gradient)):
            p.grad = view
        self.diagnostics.update(combined.info)
        if gram is not None:
            self.diagnostics.update(_gram_diagnostics(gram, names))
        self.diagnostics["grad_norm/combined"] = float(combined.gradient.norm())

    def _release_stale_grads(self) -> None:
        """Before a step's first matrix backward the selected `.grad`s must be None or zero.

        Anything else (the last step's gradient when `zero_grad` was forgotten, or a plain
        backward's) would be silently dropped, so it is refused instead.
        """
        if self._matrix is not None or self._layout is None:
            return
        for name, p in zip(self._layout.names, self._layout.params):
            if p.grad is None:
                continue
            if bool(p.grad.any()):
                raise GradsurgError(
                    f"parameter {name!r} already has a non-zero gradient; call "
                    "optimizer.zero_grad() before surgery.backward()"
                )
            p.grad = None


def _total_norm(params: Sequence[Tensor]) -> Tensor:
    """2-norm of all gradients together (inf or NaN if any entry is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _gram_diagnostics(gram: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per-group gradient norms and pairwise cosines from the Gramian (one device sync)."""
    values = gram.tolist()
    norms = [math.sqrt(max(values[i][i], 0.0)) for i in range(len(names))]
    out = {f"grad_norm/{name}": norms[i] for i, name in enumerate(names)}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            denominator = norms[i] * norms[j]
            cosine = values[i][j] / denominator if denominator > 0 else 0.0
            out[f"cosine/{names[i]}/{names[j]}"] = cosine
    return out
