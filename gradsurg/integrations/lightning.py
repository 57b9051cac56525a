"""PyTorch Lightning with gradient surgery: `SurgeryModule`, automatic optimization.

    class Net(SurgeryModule):
        def configure_surgery(self):
            return {"combiner": "pcgrad", "include": ["trunk.*"]}
        def training_step(self, batch, batch_idx):
            return self.loss_groups({"a": loss_a, "b": loss_b})

`loss_groups` hands Lightning the groups' sum (for its logs and checks) and keeps the groups;
Lightning's `backward` hook then runs `Surgery.backward` on them, divided by
`accumulate_grad_batches` and scaled by the precision plugin's GradScaler as Lightning would
have treated the loss. The micro-batch Lightning steps on combines, so `gradient_clip_val`
(which Lightning applies after the backward) and the optimizer see the final gradient.
Surgery's state goes into Lightning checkpoints under `"gradsurg"`.

A loss weighting: `configure_surgery` returns `{"weighting": ...}`; `on_train_epoch_end`
ends its epochs (call `super()` when overriding it). A learned weighting is built by you and
assigned to the module (`self.weighting = WEIGHTINGS.build(...)`) so that
`configure_optimizers`' `self.parameters()` trains it; FAMO: `loss_groups(groups,
recompute=...)`.

Manual optimization needs no mixin: call `surgery.backward(groups)`, then
`self.clip_gradients(...)`, `opt.step()`, `opt.zero_grad()` as with any loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from gradsurg.extras import import_optional
from gradsurg.integrations.groups import as_loss_groups, refuse_multi_batch, total
from gradsurg.surgery import Surgery

pl = import_optional("lightning.pytorch", extra="lightning")

#: The key of Surgery's state in a Lightning checkpoint.
CHECKPOINT_KEY = "gradsurg"


class SurgeryModule(pl.LightningModule):
    """A LightningModule whose loss groups are combined by a `Surgery` before each step."""

    surgery: Surgery | None = None

    def configure_surgery(self) -> Mapping[str, Any]:
        """Keyword arguments of `Surgery` (combiner, include, ...); accumulation comes from
        the Trainer. Override it; the default sums the groups."""
        return {"combiner": "sum"}

    def loss_groups(self, groups: Mapping[str, Tensor], *,
                    recompute: Callable[[], Mapping[str, Tensor]] | None = None) -> Tensor:
        """Keep `{group: loss}` for the backward hook; return their sum for Lightning.
        `recompute`: the batch's losses again, for a weighting such as FAMO."""
        self._groups = as_loss_groups(groups, where="training_step")
        self._recompute = recompute
        return total(self._groups)

    def on_train_epoch_end(self) -> None:
        if self.surgery is not None:
            self.surgery.epoch_end()

    def on_train_start(self) -> None:
        if self.automatic_optimization:
            self._build_surgery()

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        groups = getattr(self, "_groups", None)
        if not self.automatic_optimization or groups is None:
            super().backward(loss, *args, **kwargs)
            return
        self._groups = None
        trainer = self.trainer
        factor = 1.0 / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)

        def scale(value: Tensor) -> Tensor:
            return scaler.scale(value * factor) if scaler is not None else value * factor

        assert self.surgery is not None, "on_train_start builds the Surgery"
        last = not trainer.fit_loop.epoch_loop._should_accumulate()
        self.surgery.backward(groups, last_micro_batch=last, scale=scale,
                              recompute=getattr(self, "_recompute", None))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.surgery is not None:
            checkpoint[CHECKPOINT_KEY] = self.surgery.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._surgery_state = checkpoint.get(CHECKPOINT_KEY)

    def _build_surgery(self) -> None:
        options = dict(self.configure_surgery())
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        self.surgery = Surgery(self, optimizer, nonfinite="scaler" if scaler else "skip",
                               **options)
        refuse_multi_batch(self.surgery.combiner, framework="Lightning's backward hook")
        wrapper = getattr(self.trainer.strategy, "model", None)
        if isinstance(wrapper, nn.Module):  # strategy="ddp": DDP's rows are reduced by us
            self.surgery.use_engine(wrapper)
        state = getattr(self, "_surgery_state", None)
        if state is not None:
            self.surgery.load_state_dict(state)
            self._surgery_state = None
