"""A saved multi-exit model folder, loaded and checked for serving (predict / eval).

The folder must hold everything prediction needs (weights, configs, tokenizer); a missing
file is refused before anything loads, because transformers would otherwise fall back to
other settings and answer for differently tokenized text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradsurg.conditioning import parse_ray
from gradsurg.data.glue import TaskSpec, get_task
from gradsurg.devices import resolve_device
from gradsurg.errors import ConfigError, GradsurgError, NonFiniteError
from gradsurg.finite_weights import first_non_finite
from gradsurg.multiexit.backbones import check_max_length as check
from gradsurg.multiexit.folders import check_tokenizer_fits, loading_errors
from gradsurg.multiexit.model import MultiExitModel

__all__ = ["LoadedModel", "check_max_length", "check_model_folder", "load_for_inference"]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the runner, its tokenizer, its device and the task it was trained
    on (resolved once from the saved config; None when the folder does not record it)."""

    model: MultiExitModel
    tokenizer: Any
    device: torch.device
    task: TaskSpec | None

    @property
    def arity(self) -> int:
        """Texts per example: 2 for pair tasks, else 1."""
        return len(self.task.text_columns) if self.task is not None else 1


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


def load_for_inference(model_dir: str | Path, *, device: str = "auto",
                       preference: str | None = None) -> LoadedModel:
    """A saved model folder (weights, configs and tokenizer) ready for the runner.

    `preference` (comma-separated, one number per loss group) is the trade-off a model
    trained with `preference_conditioning` answers for; default the centre (1/k each). For
    any other model it is refused: it would change nothing."""
    from transformers import AutoTokenizer

    check_model_folder(model_dir)
    target = resolve_device(device)
    model = MultiExitModel.from_pretrained(model_dir, device=target)
    bad = first_non_finite(model)  # checked as a run checks what it saves
    if bad is not None:
        raise NonFiniteError(f"{Path(model_dir) / 'model.safetensors'}: tensor {bad!r} holds "
                             "NaN/inf, so no answer would mean anything; not used")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:
        if loading_errors(exc, Path(model_dir)) is None:
            raise
        raise GradsurgError(f"{model_dir}: no usable tokenizer in the model folder "
                            f"({_first_line(exc)})"
                            ) from None
    check_tokenizer_fits(tokenizer, model.encoder.hf_config, Path(model_dir),
                         fingerprint=model.config.tokenizer_vocabulary)
    groups = model.config.preference_groups
    if preference is not None and groups is None:
        model.set_preference(preference, where="--preference")  # refused: says why
    if groups is not None:
        model.set_preference(None if preference is None else parse_ray(
            preference, groups, where="--preference"), where="--preference")
    task = get_task(model.config.task) if model.config.task else None
    return LoadedModel(model=model, tokenizer=tokenizer, device=target, task=task)


def check_max_length(loaded: LoadedModel, max_length: int) -> None:
    """Refuse a --max-length the model's position embeddings cannot hold (it would fail on the
    first long input with an index error deep inside the backbone)."""
    check(max_length, loaded.model.encoder.hf_config, key="--max-length", model="the model")


def _first_line(error: Exception) -> str:
    """An exception's first line (at most 300 characters), or its type's name."""
    text = str(error)
    return text.splitlines()[0][:300] if text else type(error).__name__
