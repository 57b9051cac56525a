"""Tokenize GLUE datasets once, pad per batch.

Padding to the longest sequence in each batch (not to ``max_length``) keeps short-sentence
tasks like SST-2 cheap; the tokenizer's own ``pad`` handles padding side and token types.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradsurg.errors import ConfigError, DataError

TEXT_COLUMNS = ("text_a", "text_b")


def _check_max_length(max_length: int) -> None:
    if type(max_length) is not int or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")


def _pair_texts(batch: Mapping[str, list[Any]]) -> list[str] | None:
    """Second segments, or None when the dataset is single-sentence (no or all-None text_b)."""
    second = batch.get("text_b")
    if second is None or all(t is None for t in second):
        return None
    if any(t is None for t in second):
        raise DataError("text_b mixes strings and None in one batch; pair tasks need both texts")
    return second


def tokenize_dataset(dataset: Any, tokenizer: Any, *, max_length: int) -> Any:
    """Tokenize ``text_a`` (and ``text_b`` when present) with truncation and no padding.

    Returns a dataset with the tokenizer's columns plus ``label``; text columns are dropped
    so the collator sees only what the model consumes.
    """
    _check_max_length(max_length)
    if "text_a" not in dataset.column_names:
        raise DataError(f"dataset has no 'text_a' column (has: {', '.join(dataset.column_names)})")

    def encode(batch: Mapping[str, list[Any]]) -> Any:
        return tokenizer(batch["text_a"], _pair_texts(batch), truncation=True,
                         max_length=max_length, padding=False)

    drop = [c for c in TEXT_COLUMNS if c in dataset.column_names]
    return dataset.map(encode, batched=True, remove_columns=drop, desc="tokenize",
                       new_fingerprint=_tokenized_fingerprint(dataset, tokenizer, max_length))


def _tokenized_fingerprint(dataset: Any, tokenizer: Any, max_length: int) -> str | None:
    """The tokenized dataset's cache key, from what decides it: the input's fingerprint, the
    tokenizer's whole definition (vocabulary, normalizer, special tokens) and the truncation.
    Left to itself `datasets` pickles the tokenizer to hash it, about a second per call and
    two calls per run. None (`datasets` hashes) for a tokenizer without a fast backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    source = getattr(dataset, "_fingerprint", None)
    if backend is None or source is None:
        return None
    definition = json.loads(backend.to_str())
    for state in ("truncation", "padding"):  # what the last call left set, not a definition
        definition.pop(state, None)
    digest = hashlib.blake2b(digest_size=16)
    for part in (source, type(tokenizer).__qualname__, json.dumps(definition, sort_keys=True),
                 repr(getattr(tokenizer, "truncation_side", None)), str(max_length),
                 repr(sorted(map(str, tokenizer.all_special_tokens)))):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _labels_tensor(values: Sequence[Any]) -> torch.Tensor:
    """Stack labels: floating values become float32 (regression), integers become long."""
    stacked = torch.stack([torch.as_tensor(v) for v in values])
    return stacked.float() if stacked.is_floating_point() else stacked.long()


@dataclass
class GlueCollator:
    """Pad a list of tokenized rows to the batch's longest and return model-ready tensors.

    Output keys: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
    makes them) and ``labels`` (from a ``label`` or ``labels`` field, if present).
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise DataError("cannot collate an empty batch")
        label_key = next((k for k in ("labels", "label") if k in features[0]), None)
        model_inputs = set(self.tokenizer.model_input_names)
        rows = [{k: v for k, v in f.items() if k in model_inputs} for f in features]
        batch = self.tokenizer.pad(rows, padding="longest",
                                   pad_to_multiple_of=self.pad_to_multiple_of,
                                   return_tensors="pt")
        out = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if label_key is not None:
            out["labels"] = _labels_tensor([f[label_key] for f in features])
        return out
