"""The layer-by-layer early-exit runner equals a full-depth pass + the same policy, and does
less work: finished rows leave the batch, trailing padding is cut, batch size 1 stops."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from gradsurg.multiexit import MultiExitConfig, MultiExitModel, tiny_bert_config
from gradsurg.multiexit.exit_loop import EarlyExitRunner, simulate_exits
from gradsurg.multiexit.policies import POLICIES, normalized_entropy, prediction_entropy

LAYERS = 4


def confident_model(*, num_labels: int = 3, attn: str = "sdpa", pooling: str = "mean",
                    seed: int = 0) -> MultiExitModel:
    """A random 4-layer model in float64 whose exits are sharp enough to disagree in
    confidence, so every policy sends examples out at different layers."""
    torch.manual_seed(seed)
    backbone = BertModel(tiny_bert_config(num_layers=LAYERS, attn_implementation=attn))
    config = MultiExitConfig(num_labels=num_labels, pooling=pooling, backbone="tiny",
                             attn_implementation=attn)
    model = MultiExitModel(backbone, config).double().eval()
    with torch.no_grad():
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(150.0)
    return model


def ragged_batch(rows: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    width = 12
    ids = torch.randint(1000, 5000, (rows, width), generator=gen)
    lengths = torch.randint(2, width + 1, (rows,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def policies_for(all_logits: torch.Tensor) -> list:
    """Each policy with parameters at the median of its statistic on these logits."""
    ent = prediction_entropy(all_logits)
    norm = normalized_entropy(all_logits)
    top = torch.softmax(all_logits, -1).amax(-1)
    return [
        POLICIES.build({"name": "entropy", "threshold": float(ent.median())}, where="test"),
        POLICIES.build({"name": "normalized_entropy", "threshold": float(norm.median())},
                       where="test"),
        POLICIES.build({"name": "max_prob", "threshold": float(top.median())}, where="test"),
        POLICIES.build({"name": "patience", "patience": 1}, where="test"),
        POLICIES.build({"name": "patience", "patience": 2}, where="test"),
        POLICIES.build({"name": "confidence_window", "threshold": float(norm.quantile(0.2)),
                        "window": 2, "margin": 0.05}, where="test"),
        POLICIES.build({"name": "fixed", "layer": 2}, where="test"),
        POLICIES.build({"name": "fixed", "layer": LAYERS}, where="test"),
    ]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [1, 4, 10])
def test_runner_equals_full_depth_pass_with_the_same_policy(attn, batch_size) -> None:
    model = confident_model(attn=attn)
    ids, mask = ragged_batch(10)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask))
    for policy in policies_for(all_logits):
        expected = simulate_exits(policy, all_logits)
        for compact in (True, False):
            runner = EarlyExitRunner(model, policy, compact=compact)
            parts = [runner(ids[i:i + batch_size], mask[i:i + batch_size])
                     for i in range(0, 10, batch_size)]
            exits = torch.cat([p.exit_layers for p in parts])
            logits = torch.cat([p.logits for p in parts])
            assert exits.tolist() == expected.exit_layers.tolist(), policy.describe()
            torch.testing.assert_close(logits, expected.logits, rtol=1e-9, atol=1e-9)
            assert logits.argmax(-1).tolist() == expected.logits.argmax(-1).tolist()
    # The parameters above really do spread examples over several exits.
    spread = simulate_exits(policies_for(all_logits)[0], all_logits).exit_layers
    assert len(set(spread.tolist())) >= 3


def test_runner_in_float32_agrees_with_the_full_pass() -> None:
    model = confident_model().float()
    ids, mask = ragged_batch(32, seed=5)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask))
    policy = POLICIES.build(
        {"name": "entropy", "threshold": float(prediction_entropy(all_logits).median())},
        where="test")
    expected = simulate_exits(policy, all_logits)
    got = EarlyExitRunner(model, policy)(ids, mask)
    assert got.exit_layers.tolist() == expected.exit_layers.tolist()
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)


def test_regression_model_with_patience() -> None:
    model = confident_model(num_labels=1)
    ids, mask = ragged_batch(10)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask))
    steps = (all_logits[1:] - all_logits[:-1]).abs()
    policy = POLICIES.build({"name": "patience", "patience": 1,
                             "tolerance": float(steps.median())}, where="test")
    expected = simulate_exits(policy, all_logits)
    got = EarlyExitRunner(model, policy)(ids, mask)
    assert got.exit_layers.tolist() == expected.exit_layers.tolist()
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-9, atol=1e-9)
    with pytest.raises(Exception, match="needs a classification model"):
        EarlyExitRunner(model, POLICIES.build("entropy", where="test"))


class LayerCalls:
    """Records the [rows, columns] of every call to each encoder layer."""

    def __init__(self, model: MultiExitModel) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.handles = [layer.register_forward_hook(self._hook(i))
                        for i, layer in enumerate(model.encoder.layers)]

    def _hook(self, index: int):
        def record(module, args, output):
            hidden = args[0]
            self.calls.append((index, hidden.shape[0], hidden.shape[1]))
        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_finished_rows_leave_the_batch() -> None:
    model = confident_model()
    ids, mask = ragged_batch(16)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask))
    policy = policies_for(all_logits)[0]
    calls = LayerCalls(model)
    out = EarlyExitRunner(model, policy)(ids, mask)
    calls.remove()
    rows_per_layer = [rows for _, rows, _ in calls.calls]
    # Layer i runs exactly on the examples that had not left before it.
    expected = [int((out.exit_layers >= i).sum()) for i in range(LAYERS)]
    assert rows_per_layer == [r for r in expected if r > 0]
    assert sum(rows_per_layer) == int((out.exit_layers + 1).sum()) < 16 * LAYERS


def test_trailing_padding_is_cut_when_long_rows_leave() -> None:
    model = confident_model()
    ids = torch.randint(1000, 5000, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 3:] = 0  # row 1 has 3 tokens, row 0 has 10
    policy = POLICIES.build({"name": "fixed", "layer": 1}, where="test")

    class LongRowLeavesFirst(type(policy)):
        def decide(self, layer, outputs, state):
            return torch.tensor([True, False]) if layer == 0 else torch.ones(
                outputs.shape[0], dtype=torch.bool)

        def needs_outputs(self, layer):
            return True

    calls = LayerCalls(model)
    out = EarlyExitRunner(model, LongRowLeavesFirst(layer=1))(ids, mask)
    calls.remove()
    assert calls.calls == [(0, 2, 10), (1, 1, 3)]
    assert out.exit_layers.tolist() == [0, 1]
    with torch.no_grad():
        alone = model(ids[1:, :3], mask[1:, :3])[1]
    torch.testing.assert_close(out.logits[1:], alone, rtol=1e-9, atol=1e-9)


def test_batch_of_one_stops_the_forward_pass() -> None:
    model = confident_model()
    ids, mask = ragged_batch(1)
    calls = LayerCalls(model)
    policy = POLICIES.build({"name": "entropy", "threshold": 10.0}, where="test")
    out = EarlyExitRunner(model, policy)(ids, mask)
    calls.remove()
    assert out.exit_layers.tolist() == [0]
    assert calls.calls == [(0, 1, int(mask.sum()))]


def test_results_come_back_in_input_order() -> None:
    model = confident_model()
    ids, mask = ragged_batch(12)
    with torch.no_grad():
        all_logits = torch.stack(model(ids, mask))
    runner = EarlyExitRunner(model, policies_for(all_logits)[0])
    out = runner(ids, mask)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled = runner(ids[perm], mask[perm])
    assert shuffled.exit_layers.tolist() == out.exit_layers[perm].tolist()
    torch.testing.assert_close(shuffled.logits, out.logits[perm], rtol=1e-9, atol=1e-9)


def test_runner_rejects_empty_or_flat_input() -> None:
    runner = EarlyExitRunner(confident_model(), POLICIES.build("entropy", where="test"))
    with pytest.raises(ValueError, match=r"non-empty \[B, T\]"):
        runner(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"non-empty \[B, T\]"):
        runner(torch.zeros(4, dtype=torch.long))
