"""Shared fixtures: the real GLUE data beside the repository, and tiny random backbones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis tests without settings of their own run 150 examples with no deadline (timings on
# a shared 2-core machine are no property of the code). The default profile draws them from a
# fixed seed per test, so the suite (and CI, which runs README's command) gives the same verdict
# on every run; `--hypothesis-profile=explore` draws fresh examples each run to look for new
# counterexamples (each one found becomes a fix and, where it matters, an explicit example).
settings.register_profile("gradsurg", deadline=None, max_examples=150, derandomize=True,
                          database=None)
settings.register_profile("explore", deadline=None, max_examples=150)
settings.load_profile("gradsurg")

# pytest-xdist gives its workers COLUMNS=80, and rich fixes a console's width when it is built
# (at import), so the CLI's tables would wrap under `-n`; tests that read a table set COLUMNS
# themselves, per invocation.
os.environ.pop("COLUMNS", None)


def _share_the_cores_between_workers() -> None:
    """Under `pytest -n N` each worker gets cores // N torch threads, and a recipe's
    `threads` key cannot raise it: N workers each spinning up every core's worth of OpenMP
    threads make each tiny op wait on the others (a 2-core machine ran slower with
    `-n 2` than without). One process (no xdist) keeps torch's and the recipes' choice."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return
    import torch

    budget = max(1, (os.cpu_count() or 1) // workers)
    chosen = torch.set_num_threads

    def set_num_threads(threads: int) -> None:
        chosen(min(int(threads), budget))

    torch.set_num_threads = set_num_threads
    chosen(budget)


_share_the_cores_between_workers()


@pytest.fixture(scope="session")
def shared_glue_dir() -> Path:
    """`$GLUE_DIR`, else `../shared/glue_data` next to the repository (never copied in)."""
    env = os.environ.get("GLUE_DIR", "").strip()
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "glue_data"
    if not (path / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {path} (set GLUE_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tiny_backbone_dir) -> Path:
    """A 3-layer random BERT saved as a local model folder with the packaged MiniLM tokenizer,
    so recipes load it through the same code path as a real checkpoint."""
    return tiny_backbone_dir("bert")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """`tiny_backbone_dir("albert")`: a 3-layer random backbone of that model type saved as a
    local folder with the packaged MiniLM tokenizer (its vocabulary sizes the model); one
    folder per type per session. No hub is needed, which is the only way to test ALBERT,
    RoBERTa and MPNet recipes here."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from gradsurg.multiexit.backbones import resolve_backbone, tiny_config

    folders: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in folders:
            folder = tmp_path_factory.mktemp(f"tiny-{model_type}")
            torch.manual_seed(0)
            AutoModel.from_config(tiny_config(model_type, num_layers=3)).save_pretrained(folder)
            AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(folder)
            folders[model_type] = folder
        return folders[model_type]

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors (k x k problems, a few examples' logits): one thread avoids pool start-up
    and contention, which on a busy machine make each op milliseconds instead of microseconds.
    Use it as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved_model(tiny_bert_dir, tmp_path_factory) -> Path:
    """A saved multi-exit model folder (3-layer random BERT, SST-2 labels), untrained: what
    `predict` and `eval` read."""
    import torch

    from gradsurg.multiexit.model import MultiExitModel

    torch.manual_seed(0)
    model, tokenizer = MultiExitModel.from_backbone(str(tiny_bert_dir), num_labels=2)
    model.config.task, model.config.labels = "sst2", ["0", "1"]
    return model.save_pretrained(tmp_path_factory.mktemp("model"), tokenizer=tokenizer)
