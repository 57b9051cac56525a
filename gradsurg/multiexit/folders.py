"""What a model or backbone folder must be before transformers reads it: every JSON file
strict and bounded, a config that describes a buildable model, weights that load without
running pickled code, and a tokenizer that fits the model. Each problem is one ConfigError
naming the file, never a library's traceback (or its advice to pass `weights_only=False`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

from gradsurg import strict_json
from gradsurg.errors import ConfigError, GradsurgError, quoted

__all__ = ["check_json_files", "check_model_config", "check_tokenizer_fits",
           "estimated_parameters", "loading_errors", "safetensors_parameters",
           "vocabulary_fingerprint"]

#: Positive integer sizes a backbone config must have (when it has the key), with the largest
#: value taken: anything beyond describes no model that could be built here.
SIZES = {"vocab_size": 10_000_000, "hidden_size": 1 << 16, "num_hidden_layers": 1000,
         "num_attention_heads": 1 << 12, "intermediate_size": 1 << 20,
         "max_position_embeddings": 1 << 20, "embedding_size": 1 << 16}
#: The largest model a config may describe (parameters, roughly): 20 billion, and never more
#: than the machine's memory holds in float32.
MAX_PARAMETERS = 20_000_000_000


def check_json_files(folder: Path) -> None:
    """Read every `*.json` in `folder` with gradsurg's bounded strict reader first, so a
    malformed, NaN-holding or deeply nested file is one error naming it."""
    for path in sorted(folder.glob("*.json")):
        if path.is_file():
            strict_json.load_file(path)


def check_model_config(config: Any, source: Path, *, weights: int | None = None) -> None:
    """Refuse a backbone config that cannot describe a real model: sizes that are not
    positive integers in range, a hidden size the heads do not divide, a model larger than
    this machine's memory, or (`weights`: the parameters its weights file holds) far larger
    than its weights (`source`: the config file, for the message)."""
    for key, largest in SIZES.items():
        value = getattr(config, key, None)
        if value is None and key in ("embedding_size", "intermediate_size"):
            continue
        if value is None and not hasattr(config, key):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
            raise ConfigError(f"{source}: {key}={quoted(value)} describes no "
                              f"model; allowed: an integer from 1 to {largest}")
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        raise ConfigError(f"{source}: hidden_size={hidden} is not a multiple of "
                          f"num_attention_heads={heads}")
    if not isinstance(hidden, int):
        return
    size = estimated_parameters(config)
    memory = _physical_memory()
    if size > MAX_PARAMETERS or (memory is not None and 4 * size > memory):
        raise ConfigError(f"{source}: describes a model of about {size:.2g} parameters, more "
                          "than this machine can hold"
                          + (f" ({memory / 2**30:.0f} GiB)" if memory is not None else ""))
    if weights is not None and size > 2 * weights + 1_000_000:
        raise ConfigError(f"{source}: describes a model of about {size:.2g} parameters, but "
                          f"its weights file holds {weights:.2g}; the config is not the "
                          "weights'")


def estimated_parameters(config: Any) -> int:
    """A rough lower bound on the parameters a BERT-like config describes (embeddings and
    layers; ALBERT's shared layer groups counted once)."""
    hidden = int(config.hidden_size)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    groups = getattr(config, "num_hidden_groups", None)
    if isinstance(groups, int) and groups >= 1:
        layers = min(layers, groups)
    inner = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    width = int(getattr(config, "embedding_size", hidden) or hidden)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    return (vocab + positions) * width + layers * (4 * hidden * hidden + 2 * hidden * inner)


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_tokenizer_fits(tokenizer: Any, config: Any, folder: Path, *,
                         fingerprint: str | None = None) -> None:
    """Refuse a tokenizer that does not fit the model: ids the embedding table does not have,
    another padding id, or (when the folder recorded one) another vocabulary than the model
    was trained with; any of these answers for text the model never saw."""
    vocab_size = getattr(config, "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise ConfigError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model "
                          f"embeds {vocab_size} (config.json vocab_size); it is not this "
                          "model's tokenizer")
    pad_model = getattr(config, "pad_token_id", None)
    pad_tokenizer = getattr(tokenizer, "pad_token_id", None)
    if isinstance(pad_model, int) and isinstance(pad_tokenizer, int) and pad_model != pad_tokenizer:
        raise ConfigError(f"{folder}: the tokenizer pads with id {pad_tokenizer} but the model "
                          f"with {pad_model} (config.json pad_token_id); it is not this model's "
                          "tokenizer")
    if fingerprint is not None and vocabulary_fingerprint(tokenizer) != fingerprint:
        raise ConfigError(f"{folder}: the tokenizer's vocabulary is not the one the model was "
                          "saved with (gradsurg_config.json tokenizer_vocabulary); restore the "
                          "folder's tokenizer files")


def vocabulary_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's (token, id) pairs, sorted: the same for the same vocabulary
    whichever files hold it."""
    pairs = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


def loading_errors(error: BaseException, folder: Path) -> ConfigError | None:
    """The one line for what a library raised reading a model folder, or None for an error
    gradsurg should not swallow (MemoryError, KeyboardInterrupt, its own)."""
    if isinstance(error, pickle.UnpicklingError):
        weights = next((p for p in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
                        if p.is_file()), folder)
        return ConfigError(f"{weights}: pickled weights that do not load without running their "
                           "code, which gradsurg never does; save them as model.safetensors")
    if isinstance(error, (MemoryError, RecursionError, GradsurgError)) or \
            not isinstance(error, Exception):
        return None
    return ConfigError(f"{folder}: cannot be loaded ({first_line(error)})")


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type), at most 300 characters."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def safetensors_parameters(path: Path) -> int | None:
    """How many numbers a safetensors file holds, read off its header alone (None when it
    cannot be read: the weights loader reports that, naming the file)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= 100 << 20:
                return None
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    total = 0
    for key, entry in header.items() if isinstance(header, dict) else ():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        count = 1
        for dim in entry.get("shape", []):
            count *= int(dim)
        total += count
    return total
