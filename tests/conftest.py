"""Shared fixtures: the real GLUE data beside the repository, and a tiny random BERT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_glue_dir() -> Path:
    """`$GLUE_DIR`, else `../shared/glue_data` next to the repository (never copied in)."""
    env = os.environ.get("GLUE_DIR", "").strip()
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue_data"
    if not (path / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {path} (set GLUE_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT saved as a local model folder with the packaged MiniLM tokenizer,
    so recipes load it through the same code path as a real checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from gradsurg.multiexit.backbones import resolve_backbone, tiny_bert_config

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)  # the same random backbone in every session
    BertModel(tiny_bert_config(num_layers=3, hidden=32, heads=2, intermediate=64)).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(folder)
    return folder
