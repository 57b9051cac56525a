"""Multi-exit model: layer-wise adapter equivalence, exits, pooling, checkpoints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertModel

from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.multiexit import (
    Exit,
    MultiExitConfig,
    MultiExitModel,
    make_adapter,
    resolve_backbone,
    tiny_bert_config,
)
from gradsurg.multiexit.backbones import minilm_vocab_size
from gradsurg.multiexit.exits import pool

ATTN = ["eager", "sdpa"]


def tiny_backbone(*, attn: str = "sdpa", layers: int = 2, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(num_layers=layers, attn_implementation=attn)).eval()


def tiny_model(*, num_labels: int = 3, pooling: str = "cls", attn: str = "sdpa", layers: int = 2):
    config = MultiExitConfig(
        num_labels=num_labels, pooling=pooling, backbone="tiny", attn_implementation=attn
    )
    return MultiExitModel(tiny_backbone(attn=attn, layers=layers), config).eval()


def padded_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of lengths 7, 4, 2 (right-padded with id 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 7), generator=gen)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return ids * mask, mask


# -- adapter --------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ATTN)
def test_layerwise_run_reproduces_bertmodel(attn: str) -> None:
    hf = tiny_backbone(attn=attn, layers=3)
    ids, mask = padded_batch()
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        adapter = make_adapter(hf)
        hidden = adapter.embed(ids, mask, types)
        prepared = adapter.prepare_mask(mask, hidden)
        raw = hidden
        for i in range(adapter.num_layers):
            hidden = adapter.run_layer(i, hidden, prepared)
            raw = adapter.run_layer(i, raw, mask)  # a raw [B, T] mask is prepared on the fly
    real = mask.bool()
    assert adapter.num_layers == 3 and adapter.hidden_size == 32
    assert adapter.attn_implementation == attn
    torch.testing.assert_close(hidden[real], ref[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(raw[real], ref[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ATTN)
def test_pad_tokens_do_not_leak_into_real_tokens(attn: str) -> None:
    adapter = make_adapter(tiny_backbone(attn=attn))
    ids, mask = padded_batch()
    other = ids.clone()
    other[mask == 0] = 4242  # different garbage under the pads
    with torch.no_grad():
        a, b = adapter(ids, mask), adapter(other, mask)
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-6, rtol=0)
    assert not torch.allclose(a[~mask.bool()], b[~mask.bool()])


def test_rows_can_be_dropped_between_layers() -> None:
    """What an early-exit runner does: finish some rows after layer 1, keep the rest."""
    adapter = make_adapter(tiny_backbone(layers=3))
    ids, mask = padded_batch()
    with torch.no_grad():
        full = adapter(ids, mask)
        hidden = adapter.embed(ids, mask)
        prepared = adapter.prepare_mask(mask, hidden)
        hidden = adapter.run_layer(0, hidden, prepared)
        keep = torch.tensor([0, 2])
        hidden = hidden[keep]
        prepared = adapter.prepare_mask(prepared.padding[keep], hidden)
        for i in (1, 2):
            hidden = adapter.run_layer(i, hidden, prepared)
    real = mask[keep].bool()
    torch.testing.assert_close(hidden[real], full[keep][real], atol=1e-5, rtol=0)


def test_adapter_rejects_bad_input() -> None:
    adapter = make_adapter(tiny_backbone())
    ids, mask = padded_batch()
    hidden = adapter.embed(ids, mask)
    with pytest.raises(ConfigError, match="layer index 2"):
        adapter.run_layer(2, hidden, mask)
    with pytest.raises(ConfigError, match="attention_mask shape"):
        adapter.prepare_mask(mask[:, :3], hidden)


def test_unknown_model_type_is_a_config_error() -> None:
    hf = tiny_backbone()
    hf.config.model_type = "gpt2"
    with pytest.raises(ConfigError, match=r"'gpt2'.*allowed: bert"):
        make_adapter(hf)


# -- exits ----------------------------------------------------------------------------


@pytest.mark.parametrize(("num_labels", "layers"), [(3, 2), (1, 4)])
def test_one_exit_per_layer_with_logit_shapes(num_labels: int, layers: int) -> None:
    model = tiny_model(num_labels=num_labels, layers=layers)
    ids, mask = padded_batch()
    with torch.no_grad():
        logits = model(ids, mask)
    assert model.num_exits == layers == len(logits)
    assert all(t.shape == (3, num_labels) for t in logits)
    assert all(torch.isfinite(t).all() for t in logits)


def test_mean_pool_ignores_padding_values() -> None:
    hidden = torch.randn(2, 5, 4)
    padding = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    pooled = pool(hidden, padding, pooling="mean")
    torch.testing.assert_close(pooled[0], hidden[0, :3].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, 0])
    hidden[padding == 0] = 1e6
    torch.testing.assert_close(pool(hidden, padding, pooling="mean"), pooled)
    assert torch.equal(pool(hidden, padding, pooling="cls"), hidden[:, 0])


@pytest.mark.parametrize("attn", ATTN)
def test_mean_pooling_row_alone_equals_row_in_padded_batch(attn: str) -> None:
    model = tiny_model(pooling="mean", attn=attn, layers=3)
    ids, mask = padded_batch()
    with torch.no_grad():
        batched = model(ids, mask)
        for row in (1, 2):
            length = int(mask[row].sum())
            alone = model(ids[row : row + 1, :length], mask[row : row + 1, :length])
            for exit_batched, exit_alone in zip(batched, alone, strict=True):
                torch.testing.assert_close(exit_batched[row], exit_alone[0], atol=1e-5, rtol=0)


def test_bad_pooling_and_config_values() -> None:
    with pytest.raises(ConfigError, match="pooling 'max'"):
        Exit(8, 2, pooling="max")
    with pytest.raises(ConfigError, match="num_labels=0"):
        MultiExitConfig(num_labels=0)
    with pytest.raises(ConfigError, match="dropout"):
        MultiExitConfig(num_labels=2, dropout=1.5)
    with pytest.raises(ConfigError, match="'colour' is unknown"):
        MultiExitConfig.from_dict({"num_labels": 2, "colour": "red"})
    with pytest.raises(ConfigError, match="model_type='roberta'"):
        MultiExitModel(tiny_backbone(), MultiExitConfig(num_labels=2, model_type="roberta"))


# -- checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


def _forbid_pretrained_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("reload must not load pretrained backbone weights")

    monkeypatch.setattr(AutoModel, "from_pretrained", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    ("num_labels", "pooling", "attn"), [(3, "cls", "sdpa"), (1, "mean", "eager")]
)
def test_save_reload_round_trip(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    minilm_tokenizer,
    num_labels: int,
    pooling: str,
    attn: str,
) -> None:
    model = tiny_model(num_labels=num_labels, pooling=pooling, attn=attn)
    batch = minilm_tokenizer(
        ["a short one", "a somewhat longer sentence with padding elsewhere"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        before = model(**batch)
    saved = model.save_pretrained(tmp_path / "ckpt", tokenizer=minilm_tokenizer)
    names = {p.name for p in saved.iterdir()}
    assert {"model.safetensors", "gradsurg_config.json", "config.json", "tokenizer.json"} <= names
    # The folder alone must suffice: move it, forbid pretrained/hub loading, reload.
    moved = Path(shutil.move(str(saved), str(tmp_path / "elsewhere")))
    _forbid_pretrained_loading(monkeypatch)
    reloaded = MultiExitModel.from_pretrained(moved)
    assert not reloaded.training
    assert reloaded.config == model.config
    assert reloaded.encoder.attn_implementation == attn
    tokenizer = AutoTokenizer.from_pretrained(str(moved))
    with torch.no_grad():
        after = reloaded(
            **tokenizer(
                ["a short one", "a somewhat longer sentence with padding elsewhere"],
                padding=True,
                return_tensors="pt",
            )
        )
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)


@pytest.fixture
def saved_dir(tmp_path: Path) -> Path:
    return tiny_model().save_pretrained(tmp_path / "ckpt")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        MultiExitModel.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("name", ["model.safetensors", "gradsurg_config.json", "config.json"])
def test_missing_file_is_a_clear_error(saved_dir: Path, name: str) -> None:
    (saved_dir / name).unlink()
    with pytest.raises(ConfigError, match=f"has no {re.escape(name)}"):
        MultiExitModel.from_pretrained(saved_dir)


def test_corrupt_weights_are_a_clear_error(saved_dir: Path) -> None:
    weights = saved_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(GradsurgError, match=r"model\.safetensors"):
        MultiExitModel.from_pretrained(saved_dir)
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(GradsurgError, match="unreadable safetensors"):
        MultiExitModel.from_pretrained(saved_dir)


def test_corrupt_config_json_is_a_clear_error(saved_dir: Path) -> None:
    (saved_dir / "gradsurg_config.json").write_text("{not json")
    with pytest.raises(GradsurgError, match=r"gradsurg_config\.json"):
        MultiExitModel.from_pretrained(saved_dir)


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("file", "changes", "message"),
    [
        ("gradsurg_config.json", {"num_labels": 5}, "has shape"),
        ("config.json", {"num_hidden_layers": 1}, "unexpected"),
        ("config.json", {"num_hidden_layers": 3}, "missing"),
        ("config.json", {"hidden_size": 64}, "has shape"),
    ],
)
def test_checkpoint_mismatch_is_a_clear_error(
    saved_dir: Path, file: str, changes: dict[str, object], message: str
) -> None:
    _edit_json(saved_dir / file, **changes)
    with pytest.raises(GradsurgError, match=message) as info:
        MultiExitModel.from_pretrained(saved_dir)
    assert "\n" not in str(info.value)


# -- backbones ------------------------------------------------------------------------


def test_resolve_backbone_names(tmp_path: Path) -> None:
    packaged = resolve_backbone("minilm")
    assert (Path(packaged) / "config.json").is_file()
    assert resolve_backbone("all-MiniLM-L6-v2") == packaged
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match="backbone"):
        resolve_backbone(" ")


def test_tiny_config_vocab_matches_packaged_tokenizer(minilm_tokenizer) -> None:
    assert tiny_bert_config().vocab_size == minilm_vocab_size() == len(minilm_tokenizer)


def test_packaged_minilm_gives_six_exits() -> None:
    model, tokenizer = MultiExitModel.from_backbone("minilm", num_labels=2, pooling="mean")
    model.eval()
    assert model.num_exits == 6 and model.encoder.hidden_size == 384
    batch = tokenizer(
        ["hello world", "early exits save compute on easy inputs"],
        padding=True,
        return_tensors="pt",
    )
    hf = AutoModel.from_pretrained(resolve_backbone("minilm")).eval()
    with torch.no_grad():
        logits = model(**batch)
        ref = hf(**batch).last_hidden_state
        ours = model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert len(logits) == 6 and all(t.shape == (2, 2) for t in logits)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)
