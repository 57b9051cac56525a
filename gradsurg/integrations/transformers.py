"""Hugging Face `Trainer` with gradient surgery: `SurgeryTrainer`.

    trainer = SurgeryTrainer(model=model, args=TrainingArguments(...), train_dataset=...,
                             surgery={"combiner": "pcgrad", "include": ["encoder.*"]})
    trainer.train()

The model's forward (or an overridden `compute_loss`) returns `{group: loss}`. Each
micro-batch's groups go through `Surgery.backward` (divided by the accumulation steps as
Trainer divides its loss); the micro-batch Trainer syncs on combines, so Trainer's own
`max_grad_norm` clipping, its `grad_norm` log, the optimizer and the LR schedule see the final
gradient. bf16 needs nothing more; under fp16 the losses go through Trainer's GradScaler and
a non-finite step is left to it. gradsurg's per-group losses and diagnostics are averaged
between Trainer's log lines and added to them (keys as in train_log.jsonl); Surgery's state
(e.g. PCGrad's generator) is saved in every checkpoint folder as `gradsurg_surgery.pt` and
restored by `trainer.train(resume_from_checkpoint=...)`.

A loss weighting: `surgery={"combiner": ..., "weighting": ...}` (a name, or a weighting you
built; a learned one's parameters join the optimizer in a param group of their own, without
weight decay). It weighs each micro-batch's raw losses, updates after each step (FAMO
re-evaluates the batch through `compute_loss`) and ends each epoch with Trainer's.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradsurg.extras import import_optional
from gradsurg.integrations.groups import as_loss_groups, refuse_multi_batch, total
from gradsurg.outputs import atomic_write_bytes
from gradsurg.surgery import Surgery

transformers = import_optional("transformers", extra="transformers")
import_optional("accelerate", extra="transformers")  # Trainer needs it: the same one hint

#: The file in a Trainer checkpoint folder that holds Surgery's state.
STATE_FILE = "gradsurg_surgery.pt"


class SurgeryTrainer(transformers.Trainer):
    """A `Trainer` whose training step combines per-group gradients with a `Surgery`.

    `surgery`: keyword arguments of `Surgery` (combiner, include, exclude, mode,
    diagnostics_every, ...); accumulation, clipping and loss scaling come from
    `TrainingArguments`, so `accumulation_steps`, `max_grad_norm` and `loss_scale` are refused.
    """

    def __init__(self, *args: Any, surgery: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        options = dict(surgery or {"combiner": "sum"})
        taken = sorted({"accumulation_steps", "max_grad_norm", "loss_scale"} & set(options))
        if taken:
            raise ValueError(f"surgery options {taken} come from TrainingArguments "
                             "(gradient_accumulation_steps, max_grad_norm, fp16); remove them")
        super().__init__(*args, **kwargs)
        self.add_callback(_EpochEnd(self))
        self.surgery_options = options
        self.surgery: Surgery | None = None
        self._surgery_state: dict[str, Any] | None = None
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    # ---- the surgery ------------------------------------------------------------------------

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        fp16 = bool(self.args.fp16)
        inner = getattr(optimizer, "optimizer", optimizer)
        self.surgery = Surgery(self.accelerator.unwrap_model(self.model), None,
                               nonfinite="scaler" if fp16 else "skip",
                               **self.surgery_options)
        refuse_multi_batch(self.surgery.combiner, framework="Trainer's training_step")
        learned = self.surgery.parameters()  # a learned weighting's: before the LR schedule
        if learned:
            inner.add_param_group({"params": learned, "weight_decay": 0.0})
        self.surgery.attach(inner)
        if self._surgery_state is not None:
            self.surgery.load_state_dict(self._surgery_state)
            self._surgery_state = None
        return optimizer

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The model's output as `{group: loss}` (its sum, for evaluation's loss)."""
        outputs = model(**inputs)
        groups = as_loss_groups(outputs, where="the model's forward")
        if return_outputs:
            return total(groups), outputs
        return groups

    def training_step(self, model: Any, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        assert self.surgery is not None, "create_optimizer builds the Surgery"
        self.surgery.use_engine(model)  # Trainer wraps (DDP) after create_optimizer
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            result = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        groups = as_loss_groups(result, where="compute_loss")
        steps = self.current_gradient_accumulation_steps
        scaler = getattr(self.accelerator, "scaler", None)

        def scale(loss: torch.Tensor) -> torch.Tensor:
            return scaler.scale(loss / steps) if scaler is not None else loss / steps

        def recompute() -> Mapping[str, torch.Tensor]:
            with self.compute_loss_context_manager():
                return as_loss_groups(self.compute_loss(model, inputs), where="compute_loss")

        self.surgery.backward(groups, last_micro_batch=bool(self.accelerator.sync_gradients),
                              scale=scale, recompute=recompute)
        if self.surgery.pending_micro_batches == 0:  # combined: remember it for the logs
            self._remember(self.surgery.log_values())
            self._remember(self.surgery.diagnostics)
        return total({name: loss / steps for name, loss in groups.items()}).detach()

    # ---- logs and checkpoints ---------------------------------------------------------------

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._counts:  # a training log line: add the interval's means
            logs = {**logs, **{k: self._sums[k] / self._counts[k] for k in self._sums}}
            self._sums.clear()
            self._counts.clear()
        super().log(logs, *args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.surgery is not None and self.args.should_save:
            buffer = io.BytesIO()
            torch.save(self.surgery.state_dict(), buffer)  # then gradsurg's one atomic path
            atomic_write_bytes(Path(output_dir) / STATE_FILE, buffer.getvalue())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.isfile(path):
            state = torch.load(path, weights_only=True)
            if self.surgery is not None:
                self.surgery.load_state_dict(state)
            else:
                self._surgery_state = state

    def _remember(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._sums[key] += float(value)
            self._counts[key] += 1


class _EpochEnd(transformers.TrainerCallback):
    """Trainer's epoch end is the weighting's (`Surgery.epoch_end`)."""

    def __init__(self, trainer: SurgeryTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.surgery is not None:
            self.trainer.surgery.epoch_end()
