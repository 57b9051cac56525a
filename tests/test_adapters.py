"""RoBERTa, MPNet and ALBERT adapters: layer-by-layer runs equal the HF forward, the early-exit
runner equals a full pass + the same policy, and multi-exit models train, save and reload."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModel, BertModel

from gradsurg.errors import ConfigError
from gradsurg.multiexit import (
    AlbertAdapter,
    MPNetAdapter,
    MultiExitConfig,
    MultiExitModel,
    RobertaAdapter,
    make_adapter,
    tiny_bert_config,
    tiny_config,
)
from gradsurg.multiexit.exit_loop import EarlyExitRunner, simulate_exits
from gradsurg.multiexit.policies import POLICIES, prediction_entropy
from gradsurg.params import match_patterns, trainable_parameters

# (model_type, extra config); ALBERT also with two groups of two inner layers over 5 layers.
CASES = {
    "roberta": ("roberta", {}),
    "mpnet": ("mpnet", {}),
    "albert": ("albert", {}),
    "albert-groups": ("albert", {"num_hidden_groups": 2, "inner_group_num": 2}),
}
# MPNet's layers are eager only: HF refuses to build it with sdpa (tested below).
ATTN_CASES = [
    (case, attn)
    for case in CASES
    for attn in ("eager", "sdpa")
    if not (case == "mpnet" and attn == "sdpa")
]
LAYERS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they cost
    10x (thread contention), so this module runs single-threaded and restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def backbone(case: str, *, attn: str = "eager", layers: int = LAYERS, seed: int = 0) -> Any:
    model_type, extra = CASES[case]
    if case == "albert-groups":
        layers = 5  # groups 0,0,0,1,1 (AlbertTransformer's float split)
    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers=layers, attn_implementation=attn, **extra)
    return AutoModel.from_config(config).eval()


def pad_id(model: Any) -> int:
    """The id a backbone (or its adapter) treats as padding when numbering positions."""
    config = getattr(model, "hf_config", None) or model.config
    return int(getattr(model.embeddings, "padding_idx", config.pad_token_id))


def ragged_batch(rows: int, *, pad: int, width: int = 9, seed: int = 1, left: bool = False):
    """Right-padded rows of random lengths (row 0 full); with ``left`` the last row is
    left-padded instead. Pads carry the model's pad id."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (rows, width), generator=gen)
    lengths = torch.randint(2, width + 1, (rows,), generator=gen)
    lengths[0] = width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    if left and rows > 1:
        mask[-1] = mask[-1].flip(0)
    return ids.masked_fill(mask == 0, pad), mask


def segment_ids(case: str, mask: torch.Tensor) -> torch.Tensor | None:
    if case == "mpnet":
        return None  # no segment embeddings
    types = torch.zeros_like(mask)
    types[:, 4:] = 1
    return types * mask


# -- (1) adapter == HF forward -----------------------------------------------------------


@pytest.mark.parametrize(("case", "attn"), ATTN_CASES)
def test_adapter_equals_hf_forward(case: str, attn: str) -> None:
    hf = backbone(case, attn=attn).double()
    ids, mask = ragged_batch(4, pad=pad_id(hf), left=True)
    types = segment_ids(case, mask)
    kwargs = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        adapter = make_adapter(hf)
        out = adapter(ids, mask, types)
        raw = adapter.embed(ids, mask, types)
        for i in range(adapter.num_layers):
            raw = adapter.run_layer(i, raw, mask)  # a raw [B, T] mask is prepared per layer
    assert type(adapter).model_type == hf.config.model_type
    assert adapter.attn_implementation == attn
    assert adapter.num_layers == hf.config.num_hidden_layers
    assert out.shape == (*ids.shape, adapter.hidden_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(raw, ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("case", ["roberta", "mpnet"])
def test_positions_come_from_token_ids(case: str) -> None:
    """RoBERTa/MPNet number positions from the first non-pad token, so a left-padded row
    (pads = the model's pad id) gives the same real-token states as the row alone; MPNet's
    relative bias only sees offsets between tokens, which padding does not change."""
    hf = backbone(case).double()
    adapter = make_adapter(hf)
    ids = torch.randint(1000, 5000, (1, 5))
    padded = torch.cat([torch.full((1, 3), pad_id(hf)), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = adapter(ids, torch.ones_like(ids))
        shifted = adapter(padded, mask)
        ref = hf(input_ids=padded, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(shifted[:, 3:], alone, rtol=0, atol=1e-9)
    torch.testing.assert_close(shifted, ref, rtol=0, atol=1e-9)


def test_mpnet_ignores_segments_and_is_eager_only() -> None:
    hf = backbone("mpnet").double()
    adapter = make_adapter(hf)
    ids, mask = ragged_batch(3, pad=pad_id(hf))
    with torch.no_grad():
        torch.testing.assert_close(
            adapter(ids, mask, torch.ones_like(ids)), adapter(ids, mask), rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        AutoModel.from_config(tiny_config("mpnet", num_layers=1, attn_implementation="sdpa"))
    hf.config._attn_implementation = "sdpa"
    with pytest.raises(ConfigError, match=r"attn_implementation='sdpa'.*allowed: eager"):
        make_adapter(hf)


def test_albert_shares_groups_and_projects_embeddings() -> None:
    hf = backbone("albert-groups")
    adapter = make_adapter(hf)
    assert isinstance(adapter, AlbertAdapter)
    assert adapter.num_layers == 5 and len(adapter.layers) == 2
    assert adapter.group_of_layer == (0, 0, 0, 1, 1)
    assert len(adapter.layers[0].albert_layers) == 2
    ids, mask = ragged_batch(2, pad=pad_id(hf))
    assert hf.config.embedding_size == 16 != adapter.hidden_size == 32
    assert adapter.embed(ids, mask).shape == (2, ids.shape[1], 32)


@pytest.mark.parametrize("case", CASES)
def test_rows_and_tail_can_be_dropped_between_layers(case: str) -> None:
    """What the runner does: drop rows after layer 1, cut now-unused pad columns, re-prepare."""
    hf = backbone(case).double()
    adapter = make_adapter(hf)
    ids, mask = ragged_batch(4, pad=pad_id(hf))
    keep = torch.tensor([1, 3])
    length = int(mask[keep].sum(1).max())
    assert length < ids.shape[1]
    with torch.no_grad():
        full = adapter(ids, mask)
        hidden = adapter.embed(ids, mask)
        prepared = adapter.prepare_mask(mask, hidden)
        hidden = adapter.run_layer(0, hidden, prepared)
        hidden = hidden[keep]
        prepared = adapter.prepare_mask(prepared.padding[keep], hidden)
        hidden = adapter.run_layer(1, hidden, prepared)
        hidden = hidden[:, :length]
        prepared = adapter.prepare_mask(prepared.padding[:, :length], hidden)
        for i in range(2, adapter.num_layers):
            hidden = adapter.run_layer(i, hidden, prepared)
    real = mask[keep, :length].bool()
    torch.testing.assert_close(hidden[real], full[keep, :length][real], rtol=0, atol=1e-9)


def test_wrong_backbone_class_is_a_one_line_config_error() -> None:
    torch.manual_seed(0)
    bert = BertModel(tiny_bert_config(num_layers=1))
    roberta = backbone("roberta", layers=1)
    for adapter_cls, model, name in [
        (RobertaAdapter, bert, "RobertaModel"),
        (MPNetAdapter, roberta, "MPNetModel"),
        (AlbertAdapter, bert, "AlbertModel"),
        (AlbertAdapter, torch.nn.Linear(2, 2), "AlbertModel"),
    ]:
        with pytest.raises(ConfigError, match=f"is not a transformers {name}; allowed") as info:
            adapter_cls(model)
        assert "\n" not in str(info.value)
    # A head model of the right type is not the bare encoder the adapter wants.
    from transformers import RobertaForSequenceClassification

    head = RobertaForSequenceClassification(tiny_config("roberta", num_layers=1))
    with pytest.raises(ConfigError, match="RobertaForSequenceClassification is not a transformers"):
        make_adapter(head)


def test_tiny_config_accepts_max_positions_tokens() -> None:
    for model_type in ("roberta", "mpnet", "albert"):
        torch.manual_seed(0)
        config = tiny_config(model_type, num_layers=1, max_positions=8, attn_implementation="eager")
        hf = AutoModel.from_config(config).eval()
        ids = torch.randint(1000, 5000, (2, 8))
        with torch.no_grad():
            out = make_adapter(hf)(ids, torch.ones_like(ids))
        assert out.shape == (2, 8, 32)
    with pytest.raises(ConfigError, match="'nope' is not a transformers config"):
        tiny_config("nope")


# -- (2) early-exit runner == full pass + simulate_exits ----------------------------------


def confident_model(case: str, attn: str) -> MultiExitModel:
    """A float64 multi-exit model whose exits are sharp enough to leave at different layers."""
    hf = backbone(case, attn=attn)
    config = MultiExitConfig(
        num_labels=3, pooling="mean", backbone="tiny", attn_implementation=attn
    )
    model = MultiExitModel(hf, config).double().eval()
    with torch.no_grad():
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(150.0)
    return model


@pytest.mark.parametrize(("case", "attn"), ATTN_CASES)
def test_runner_equals_full_pass_with_compaction(case: str, attn: str) -> None:
    model = confident_model(case, attn)
    ids, mask = ragged_batch(10, pad=pad_id(model.encoder), width=12, seed=2)
    types = segment_ids(case, mask)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask, types))
    entropy = prediction_entropy(all_logits)
    policies = [
        POLICIES.build({"name": "entropy", "threshold": float(entropy.median())}, where="test"),
        POLICIES.build({"name": "patience", "patience": 1}, where="test"),
    ]
    for policy in policies:
        expected = simulate_exits(policy, all_logits)
        runner = EarlyExitRunner(model, policy, compact=True)
        for batch_size in (1, 5):
            parts = [
                runner(
                    ids[i : i + batch_size],
                    mask[i : i + batch_size],
                    None if types is None else types[i : i + batch_size],
                )
                for i in range(0, 10, batch_size)
            ]
            exits = torch.cat([p.exit_layers for p in parts])
            logits = torch.cat([p.logits for p in parts])
            assert exits.tolist() == expected.exit_layers.tolist(), (policy.describe(), batch_size)
            torch.testing.assert_close(logits, expected.logits, rtol=1e-9, atol=1e-9)
    # The entropy threshold really spreads examples over several exits.
    assert len(set(simulate_exits(policies[0], all_logits).exit_layers.tolist())) >= 2


@pytest.mark.parametrize("case", CASES)
def test_runner_cuts_the_tail_when_the_long_row_leaves(case: str) -> None:
    model = confident_model(case, "eager")
    pad = pad_id(model.encoder)
    ids = torch.randint(1000, 5000, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 3:] = 0  # row 1 has 3 tokens, row 0 has 10
    ids = ids.masked_fill(mask == 0, pad)
    fixed = POLICIES.build({"name": "fixed", "layer": 1}, where="test")

    class LongRowLeavesFirst(type(fixed)):
        def decide(self, layer, outputs, state):
            if layer == 0:
                return torch.tensor([True, False])
            return torch.ones(outputs.shape[0], dtype=torch.bool)

        def needs_outputs(self, layer):
            return True

    shapes: list[tuple[int, int]] = []
    handles = [
        layer.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape[:2])))
        for layer in model.encoder.layers
    ]
    out = EarlyExitRunner(model, LongRowLeavesFirst(layer=1))(ids, mask)
    for handle in handles:
        handle.remove()
    assert shapes == [(2, 10), (1, 3)]
    assert out.exit_layers.tolist() == [0, 1]
    with torch.no_grad():
        full = model(ids, mask)[1][1:]
    torch.testing.assert_close(out.logits[1:], full, rtol=1e-9, atol=1e-9)


# -- (3) train step, save, reload --------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_train_step_save_and_reload(case: str, tmp_path) -> None:
    attn = "eager" if case == "mpnet" else "sdpa"
    config = MultiExitConfig(num_labels=2, backbone="tiny", attn_implementation=attn)
    model = MultiExitModel(backbone(case, attn=attn), config)
    assert model.config.model_type == CASES[case][0]
    assert model.num_exits == model.encoder.num_layers
    ids, mask = ragged_batch(4, pad=pad_id(model.encoder))
    types = segment_ids(case, mask)
    labels = torch.tensor([0, 1, 1, 0])

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = sum(
        torch.nn.functional.cross_entropy(logits, labels) for logits in model(ids, mask, types)
    )
    loss.backward()
    # Every parameter the model runs gets a gradient: no HF pooler or unused module is kept.
    named = dict(model.named_parameters())
    assert [n for n, p in named.items() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in named.values())
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.layers.") for k in changed)
    # The default surgery selection (glue recipe) finds the shared/stacked layers.
    assert match_patterns(trainable_parameters(model), include=["encoder.layers.*"])

    model.eval()
    folder = model.save_pretrained(tmp_path / "ckpt")
    reloaded = MultiExitModel.from_pretrained(folder)
    assert reloaded.config == model.config
    assert type(reloaded.encoder) is type(model.encoder)
    assert reloaded.encoder.attn_implementation == attn
    expected_state = model.state_dict()
    assert reloaded.state_dict().keys() == expected_state.keys()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, expected_state[key]), key
    with torch.no_grad():
        for a, b in zip(model(ids, mask, types), reloaded(ids, mask, types), strict=True):
            assert torch.equal(a, b)


def test_adapters_keep_only_their_parts_in_the_same_order() -> None:
    """The modules each adapter takes over, in parameter order (checkpoints, optimizer state
    and the surgery's parameter selection all follow it); the HF pooler is never kept."""
    expected = {
        "roberta": ["embeddings", "layers"],
        "mpnet": ["embeddings", "layers", "relative_attention_bias"],
        "albert": ["embeddings", "projection", "layers"],
    }
    for case, children in expected.items():
        adapter = make_adapter(backbone(case))
        assert [name for name, _ in adapter.named_children()] == children, case
        assert not any("pooler" in name for name, _ in adapter.named_parameters())
