"""Batched early-exit prediction on texts, for ``gradsurg predict``.

It goes through :class:`~gradsurg.multiexit.exit_loop.EarlyExitRunner`, so a prediction
costs what the early exit really costs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from gradsurg.devices import to_device
from gradsurg.errors import ConfigError
from gradsurg.multiexit.exit_loop import EarlyExitRunner
from gradsurg.multiexit.policies import ExitPolicy
from gradsurg.multiexit.serving.loaded_model import LoadedModel
from gradsurg.multiexit.serving.textio import InputText
from gradsurg.multiexit.serving.timing import RunnerTimer

__all__ = ["predict_texts"]


def _batches(items: Iterable[InputText], size: int) -> Iterator[list[InputText]]:
    batch: list[InputText] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_texts(loaded: LoadedModel, policy: ExitPolicy, texts: Iterable[InputText], *,
                  batch_size: int = 32, max_length: int = 128) -> Iterator[dict[str, Any]]:
    """One record per input, in input order: the answer, its confidence and exit layer.

    ``exit_layer`` counts layers run (1 = the first exit), like the per-exit tables.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid; allowed: an integer >= 1")
    runner = EarlyExitRunner(loaded.model, policy)
    timer = RunnerTimer(loaded.device)
    labels = loaded.model.config.labels
    for batch in _batches(texts, batch_size):
        pairs = [t.text_b for t in batch] if batch[0].text_b is not None else None
        encoded = loaded.tokenizer([t.text_a for t in batch], pairs, truncation=True,
                                   max_length=max_length, padding=True, return_tensors="pt")
        out = timer.run(runner, to_device(encoded, loaded.device))
        logits = out.logits.float().cpu()
        exits = (out.exit_layers + 1).cpu().tolist()
        if logits.shape[-1] == 1:
            for item, score, layer in zip(batch, logits[:, 0].tolist(), exits):
                yield {"line": item.line, "score": score, "exit_layer": layer}
            continue
        probs = torch.softmax(logits, dim=-1)
        confidence, classes = probs.max(dim=-1)
        for item, cls, conf, layer in zip(batch, classes.tolist(), confidence.tolist(), exits):
            yield {"line": item.line, "label": labels[cls] if labels else str(cls),
                   "class": cls, "confidence": conf, "exit_layer": layer}
