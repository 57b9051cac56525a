"""The exit loop: early-exit inference that saves wall-clock time at any batch size.

:class:`EarlyExitRunner` runs the encoder one layer at a time. After each layer the exit
policy decides which rows leave; their answers are stored at their original positions and
the rows are dropped from the working batch (hidden states, padding mask and policy state
are indexed together, and trailing columns that are padding for every remaining row are cut
off), so later layers run on fewer, often shorter, rows. At batch size 1 this simply stops
the forward pass.

:func:`simulate_exits` applies the same loop to exit outputs computed beforehand by a
full-depth pass (``MultiExitModel.forward``); a training run's threshold sweep uses it, and
the tests check that it gives the runner's exits and predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import ExitPolicy

__all__ = ["EarlyExitOutput", "EarlyExitRunner", "check_all_logits", "simulate_exits"]


@dataclass(frozen=True)
class EarlyExitOutput:
    """Each example's outputs at its own exit, in input order."""

    logits: Tensor  # [N, C]
    exit_layers: Tensor  # [N], 0-based exit index; layers run = exit_layers + 1


class _Stepper(Protocol):
    """The part of the exit loop that knows where exit outputs come from."""

    def advance(self, layer: int, need_outputs: bool) -> Tensor | None:
        """Move the current rows through ``layer``; that exit's outputs if asked for."""

    def keep(self, stay: Tensor) -> None:
        """Keep only the current rows where ``stay`` (bool) is true."""


def _exit_loop(policy: ExitPolicy, stepper: _Stepper, *, num_rows: int, num_layers: int,
               device: torch.device) -> EarlyExitOutput:
    state = policy.start(num_rows, device)
    alive = torch.arange(num_rows, device=device)
    exit_layers = torch.full((num_rows,), num_layers - 1, dtype=torch.long, device=device)
    logits: Tensor | None = None
    for layer in range(num_layers):
        last = layer == num_layers - 1
        outputs = stepper.advance(layer, last or policy.needs_outputs(layer))
        if last:
            leave = torch.ones(alive.shape[0], dtype=torch.bool, device=device)
        else:
            leave = policy.decide(layer, outputs, state)
        if not bool(leave.any()):
            continue
        if outputs is None:
            raise RuntimeError(f"exit policy {policy.describe()} let rows leave at exit {layer} "
                               "but said it needed no outputs there (needs_outputs)")
        if logits is None:
            logits = outputs.new_empty((num_rows, outputs.shape[-1]))
        rows = alive[leave]
        logits[rows] = outputs[leave]
        exit_layers[rows] = layer
        stay = ~leave
        if last or not bool(stay.any()):
            break
        alive = alive[stay]
        state = {key: value[stay] for key, value in state.items()}
        stepper.keep(stay)
    assert logits is not None  # the last exit always answers
    return EarlyExitOutput(logits=logits, exit_layers=exit_layers)


class _PrecomputedStepper:
    def __init__(self, all_logits: Tensor) -> None:
        self.all_logits = all_logits
        self.alive = torch.arange(all_logits.shape[1], device=all_logits.device)

    def advance(self, layer: int, need_outputs: bool) -> Tensor | None:
        return self.all_logits[layer, self.alive] if need_outputs else None

    def keep(self, stay: Tensor) -> None:
        self.alive = self.alive[stay]


def check_all_logits(all_logits: Tensor) -> None:
    """Stacked exit outputs must be a non-empty ``[L, N, C]`` tensor."""
    if all_logits.ndim != 3 or 0 in all_logits.shape:
        raise ValueError("all_logits must be a non-empty [L, N, C] tensor, got shape "
                         f"{tuple(all_logits.shape)}")


def simulate_exits(policy: ExitPolicy, all_logits: Tensor) -> EarlyExitOutput:
    """Exits and outputs a policy gives on precomputed ``[L, N, C]`` exit logits."""
    check_all_logits(all_logits)
    num_layers, num_rows, num_outputs = all_logits.shape
    policy.check_model(num_outputs, num_layers)
    return _exit_loop(policy, _PrecomputedStepper(all_logits), num_rows=num_rows,
                      num_layers=num_layers, device=all_logits.device)


class _EncoderStepper:
    def __init__(self, model: MultiExitModel, input_ids: Tensor, attention_mask: Tensor,
                 token_type_ids: Tensor | None, *, compact: bool) -> None:
        self.model = model
        self.encoder = model.encoder
        self.compact = compact
        hidden = model.embed(input_ids, attention_mask, token_type_ids)
        if compact:  # a batch padded to a fixed length need not run its empty tail
            hidden, attention_mask = _cut_unused_tail(hidden, attention_mask)
        self.hidden = hidden
        self.mask = self.encoder.prepare_mask(attention_mask, hidden)
        self.rows = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def advance(self, layer: int, need_outputs: bool) -> Tensor | None:
        self.hidden = self.encoder.run_layer(layer, self.hidden, self.mask)
        if not need_outputs:
            return None
        if self.compact:
            return self.model.exits[layer](self.hidden, self.mask.padding)
        # Without compaction finished rows keep running; answer for the live ones only.
        return self.model.exits[layer](self.hidden[self.rows], self.mask.padding[self.rows])

    def keep(self, stay: Tensor) -> None:
        if not self.compact:
            live = self.rows.nonzero().squeeze(1)
            self.rows = self.rows.clone()
            self.rows[live[~stay]] = False
            return
        self.hidden, padding = _cut_unused_tail(self.hidden[stay], self.mask.padding[stay])
        self.mask = self.encoder.prepare_mask(padding, self.hidden)


def _cut_unused_tail(hidden: Tensor, padding: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every row.

    Positions were added by ``embed``, so the remaining tokens keep theirs, and
    relative-position layers see the same offsets between them.
    """
    used = padding.any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    if length < padding.shape[1]:
        return hidden[:, :length], padding[:, :length]
    return hidden, padding


class EarlyExitRunner:
    """``runner(input_ids, attention_mask)`` -> :class:`EarlyExitOutput` under one policy.

    ``compact=False`` keeps finished rows in the batch (they are computed and ignored, the
    way the published code bases batch); it exists to measure what compaction buys.
    """

    def __init__(self, model: MultiExitModel, policy: ExitPolicy, *, compact: bool = True) -> None:
        policy.check_model(model.config.num_labels, model.num_exits)
        self.model = model
        self.policy = policy
        self.compact = compact

    @torch.inference_mode()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 token_type_ids: Tensor | None = None) -> EarlyExitOutput:
        if input_ids.ndim != 2 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must be a non-empty [B, T] batch, got shape "
                             f"{tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stepper = _EncoderStepper(self.model, input_ids, attention_mask, token_type_ids,
                                  compact=self.compact)
        return _exit_loop(self.policy, stepper, num_rows=input_ids.shape[0],
                          num_layers=self.model.num_exits, device=input_ids.device)
