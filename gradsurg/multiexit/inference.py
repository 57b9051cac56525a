"""Saved multi-exit models at work: batched early-exit prediction and timed GLUE evaluation.

Both go through :class:`~gradsurg.multiexit.runner.EarlyExitRunner`, so the time they report
is the time the early exit really takes. Timings cover the model only (tokenization and
batching are the same with or without early exit) and synchronize the device first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradsurg.data.glue import TaskSpec, get_task
from gradsurg.devices import resolve_device
from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.early_exit import expected_time_percent
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import ExitPolicy, FixedPolicy
from gradsurg.multiexit.runner import EarlyExitOutput, EarlyExitRunner
from gradsurg.multiexit.textio import InputText

__all__ = ["EvalReport", "LoadedModel", "check_max_length", "evaluate_split", "load_for_inference",
           "predict_texts"]


@dataclass
class LoadedModel:
    model: MultiExitModel
    tokenizer: Any
    device: torch.device

    @property
    def task(self) -> TaskSpec | None:
        name = self.model.config.task
        return get_task(name) if name else None

    @property
    def arity(self) -> int:
        """Texts per example: 2 for pair tasks, else 1."""
        task = self.task
        return len(task.text_columns) if task is not None else 1


#: Files a saved model folder must hold (MultiExitModel.save_pretrained with a tokenizer).
MODEL_FILES = ("gradsurg_config.json", "config.json", "model.safetensors",
               "tokenizer_config.json")
#: The tokenizer's vocabulary: one of these (fast tokenizers write tokenizer.json).
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")


def check_model_folder(model_dir: str | Path) -> None:
    """Refuse a model folder that lacks a file prediction needs, before loading anything.

    Without `tokenizer_config.json` or the vocabulary, transformers falls back to other
    settings or files and the model silently answers for differently tokenized text.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(f"model folder {str(folder)!r} {what}; expected a run's model/ folder")
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            raise ConfigError(f"model folder {str(folder)!r} has no {name}; expected a folder "
                              "written by a run (model/) or MultiExitModel.save_pretrained")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise ConfigError(f"model folder {str(folder)!r} has no tokenizer vocabulary (one of "
                          f"{', '.join(VOCABULARY_FILES)})")
    empty = next((p.name for p in sorted(folder.iterdir()) if p.is_file() and
                  p.stat().st_size == 0 and not p.name.startswith(".")), None)
    if empty is not None:
        raise ConfigError(f"model folder {str(folder)!r}: {empty} is empty")


def load_for_inference(model_dir: str | Path, *, device: str = "auto") -> LoadedModel:
    """A saved model folder (weights, configs and tokenizer) ready for the runner."""
    from transformers import AutoTokenizer

    check_model_folder(model_dir)
    target = resolve_device(device)
    model = MultiExitModel.from_pretrained(model_dir, device=target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GradsurgError(f"{model_dir}: no usable tokenizer in the model folder "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                            ) from None
    return LoadedModel(model=model, tokenizer=tokenizer, device=target)


def check_max_length(loaded: LoadedModel, max_length: int) -> None:
    """Refuse a --max-length the model's position embeddings cannot hold (it would fail on the
    first long input with an index error deep inside the backbone)."""
    from gradsurg.programs.multiexit_glue.checks import check_max_length as check

    check(max_length, loaded.model.encoder.hf_config, key="--max-length", model="the model")


class _Timer:
    """Seconds spent inside the runner, synchronizing accelerators around each call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def run(self, runner: EarlyExitRunner, batch: Mapping[str, Tensor]) -> EarlyExitOutput:
        self._sync()
        start = time.perf_counter()
        out = runner(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        self._sync()
        self.seconds += time.perf_counter() - start
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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
    timer = _Timer(loaded.device)
    labels = loaded.model.config.labels
    for batch in _batches(texts, batch_size):
        pairs = [t.text_b for t in batch] if batch[0].text_b is not None else None
        encoded = loaded.tokenizer([t.text_a for t in batch], pairs, truncation=True,
                                   max_length=max_length, padding=True, return_tensors="pt")
        encoded = {k: v.to(loaded.device) for k, v in encoded.items()}
        out = timer.run(runner, encoded)
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


@dataclass
class EvalReport:
    """What ``gradsurg eval`` prints: quality, predicted cost and measured cost."""

    task: str
    split: str
    policy: str
    examples: int
    metric: dict[str, float]
    time_percent: float
    seconds: float
    exit_counts: list[int]
    full_depth_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_speedup(self) -> float:
        return 100.0 / self.time_percent

    @property
    def measured_speedup(self) -> float | None:
        if self.full_depth_seconds is None:
            return None
        return self.full_depth_seconds / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "split": self.split, "policy": self.policy,
                "examples": self.examples, **self.metric, "time_percent": self.time_percent,
                "seconds": self.seconds, "examples_per_second": self.examples / self.seconds,
                "exit_counts": self.exit_counts, "predicted_speedup": self.predicted_speedup,
                "full_depth_seconds": self.full_depth_seconds,
                "measured_speedup": self.measured_speedup, **self.extra}


def _timed_pass(loaded: LoadedModel, policy: ExitPolicy, loader: Iterable[Mapping[str, Tensor]]
                ) -> tuple[Tensor, Tensor, Tensor, float]:
    runner = EarlyExitRunner(loaded.model, policy)
    timer = _Timer(loaded.device)
    logits, exits, labels = [], [], []
    for batch in loader:
        moved = {k: v.to(loaded.device) for k, v in batch.items()}
        out = timer.run(runner, moved)
        logits.append(out.logits.float().cpu())
        exits.append(out.exit_layers.cpu())
        labels.append(batch["labels"])
    return torch.cat(logits), torch.cat(exits), torch.cat(labels), timer.seconds


def evaluate_split(loaded: LoadedModel, policy: ExitPolicy, *, task: str | None = None,
                   split: str = "dev", data_dir: str | None = None, batch_size: int = 32,
                   max_length: int = 128, max_rows: int | None = None,
                   full_depth: bool = False) -> EvalReport:
    """Score a saved model on a GLUE split under ``policy``, timing the early-exit passes.

    With ``full_depth`` the same batches also run through every layer (last exit only) and
    the report carries both times, so the measured speed-up sits next to the predicted one.
    """
    from torch.utils.data import DataLoader

    from gradsurg.data.collate import GlueCollator, tokenize_dataset
    from gradsurg.data.glue import load_glue

    spec = _task_for(loaded, task)
    data = tokenize_dataset(load_glue(spec, split, data_dir=data_dir, max_rows=max_rows),
                            loaded.tokenizer, max_length=max_length)
    collate = GlueCollator(loaded.tokenizer)
    loader = list(DataLoader(data, batch_size=batch_size, collate_fn=collate))
    logits, exits, labels, seconds = _timed_pass(loaded, policy, loader)
    predictions = logits[:, 0] if spec.is_regression else logits.argmax(dim=-1)
    num_layers = loaded.model.num_exits
    report = EvalReport(
        task=spec.name, split=split, policy=policy.describe(), examples=int(labels.shape[0]),
        metric=compute_metrics(spec, predictions, labels),
        time_percent=expected_time_percent(exits, num_layers), seconds=seconds,
        exit_counts=torch.bincount(exits, minlength=num_layers).tolist(),
    )
    if full_depth:
        report.full_depth_seconds = _timed_pass(loaded, FixedPolicy(layer=num_layers), loader)[3]
    return report


def _task_for(loaded: LoadedModel, task: str | None) -> TaskSpec:
    saved = loaded.task
    if task is None:
        if saved is None:
            raise ConfigError("the model folder does not record its task; pass --task")
        return saved
    spec = get_task(task)
    if spec.num_labels != loaded.model.config.num_labels:
        raise ConfigError(f"task {spec.name!r} has {spec.num_labels} output(s) but the model has "
                          f"{loaded.model.config.num_labels}")
    return spec
