"""`Surgery(..., conflict_blocks=...)`: per-block cosines for any combiner, the keys and values
`blockwise` logs and a NumPy reference, without changing the update; refusals in one line.
The recipe key `conflict_blocks`: refused where no two groups meet, and a real run's log
drawn as a conflict map by `gradsurg compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_runs import assert_run_refuses, invoke, tiny_recipe
from fake_runs import compare
from models import Exits, exit_losses

from gradsurg import Surgery
from gradsurg.combiners.blocks import MEASURED_KEY
from gradsurg.combiners.stage import batch_mean_gramian
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["layers.*"]
EXITS = ["exit1", "exit2", "exit3"]


def block_keys(diagnostics: dict[str, float]) -> dict[str, float]:
    """The per-block entries (`<measure>/<block>/<a>/<b>`)."""
    return {k: v for k, v in diagnostics.items()
            if k.split("/")[0] in ("cosine", "conflict") and k.count("/") == 3}


def first_step(combiner, **options) -> dict[str, float]:
    model = Exits()
    surgery = Surgery(model, None, combiner, include=LAYERS, **options)
    surgery.backward(exit_losses(model))
    return surgery.diagnostics


def test_the_keys_are_blockwise_sums_and_match_a_numpy_reference():
    logged = block_keys(first_step("upgrad", conflict_blocks="per_layer"))
    blockwise = block_keys(first_step({"name": "blockwise", "inner": "sum"}))
    assert logged == blockwise  # the same keys, the same floats
    # NumPy: each exit's gradient on each layer's parameters, their cosines
    model = Exits()
    losses = exit_losses(model)
    expected = {}
    for layer in range(3):
        params = list(model.layers[layer].parameters())
        rows = {}
        for name, loss in losses.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            flat = np.concatenate([np.zeros(p.numel()) if g is None else g.double().numpy().ravel()
                                   for p, g in zip(params, grads)])
            if np.any(flat):
                rows[name] = flat
        names = list(rows)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                cosine = rows[a] @ rows[b] / np.linalg.norm(rows[a]) / np.linalg.norm(rows[b])
                expected[f"cosine/layers.{layer}/{a}/{b}"] = cosine
                expected[f"conflict/layers.{layer}/{a}/{b}"] = float(cosine < 0)
    # layer 0: three exits; layer 1: exits 2 and 3; layer 2: exit 3 alone, no pair
    assert sorted(logged) == sorted(expected) and len(expected) == 8
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key


COMBINERS = ["upgrad", "pcgrad", {"name": "project", "target": "exit3", "reference": "exit1"},
             {"name": "pcd", "primary": "exit3"}, {"name": "blockwise", "inner": "upgrad"},
             "sum"]


@pytest.mark.parametrize("combiner", COMBINERS, ids=str)
def test_the_update_is_bitwise_the_same_with_and_without(combiner):
    """Three SGD steps (stateful combiners carry their state) with and without the option."""
    grads = []
    for blocks in (None, "per_layer"):
        model = Exits()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        surgery = Surgery(model, optimizer, combiner, include=LAYERS, conflict_blocks=blocks,
                          diagnostics_every=1 if combiner == "sum" else None)
        seen = []
        for step in range(3):
            surgery.backward(exit_losses(model, seed=step))
            seen.append([p.grad.clone() for p in model.parameters()])
            optimizer.step()
            optimizer.zero_grad()
        grads.append(seen)
        logs_blocks = blocks is not None or "blockwise" in str(combiner)
        assert bool(block_keys(surgery.diagnostics)) == logs_blocks
    for without, with_blocks in zip(*grads):
        for a, b in zip(without, with_blocks):
            assert torch.equal(a, b)


def test_sum_measures_on_the_steps_that_build_the_matrix_only():
    model = Exits()
    surgery = Surgery(model, None, "sum", include=LAYERS, conflict_blocks=LAYERS,
                      diagnostics_every=2)
    logged, said = [], []
    for step in range(3):
        surgery.backward(exit_losses(model, seed=step))
        logged.append(bool(block_keys(surgery.diagnostics)))
        said.append(surgery.diagnostics[MEASURED_KEY])
        model.zero_grad()
    assert logged == [True, False, True]  # steps 1 and 3 (diagnostics_every=2)
    assert said == [1.0, 0.0, 1.0]  # so a log line's mean is its share of measured steps
    # globs name the blocks: one block over all layers, every exit reaches it
    assert sorted(block_keys(surgery.diagnostics)) == sorted(
        f"{m}/layers.*/{a}/{b}" for m in ("cosine", "conflict")
        for a, b in (("exit1", "exit2"), ("exit1", "exit3"), ("exit2", "exit3")))


def test_a_combiner_that_builds_the_matrix_measures_every_step():
    assert first_step({"name": "project", "target": "exit3", "reference": "exit1"},
                      conflict_blocks=LAYERS)[MEASURED_KEY] == 1.0
    assert MEASURED_KEY not in first_step("upgrad")  # no conflict_blocks, nothing said


def test_the_map_weighs_each_line_by_the_steps_it_measured():
    """Two lines of 5 steps; the sum measured one step of each (share 0.2): the first in
    conflict, the second not. Half the measured steps conflict, whatever the logged steps."""
    from gradsurg.report.conflicts import conflict_map, markdown_lines

    key = "conflict/layers.0/a/b"
    lines = [{"stage": "joint", "step": 5, key: 1.0, "cosine/layers.0/a/b": -0.5,
              MEASURED_KEY: 0.2},
             {"stage": "joint", "step": 10, key: 0.0, "cosine/layers.0/a/b": 0.3,
              MEASURED_KEY: 0.2},
             {"stage": "joint", "step": 20, key: 0.0, "cosine/layers.0/a/b": 0.1,
              MEASURED_KEY: 0.4}]
    found = conflict_map(lines)
    # measured 1 + 1 + 4 steps: conflict on 1 of 6, the cosine weighed the same way
    assert (found["steps"], found["measured_steps"]) == (20, 6)
    assert found["conflict_share"]["layers.0"]["a/b"] == pytest.approx(1 / 6)
    assert found["mean_cosine"]["layers.0"]["a/b"] == pytest.approx((-0.5 + 0.3 + 4 * 0.1) / 6)
    assert "(over 20 steps, 6 of them measured)." in markdown_lines(found)[0]
    # a log that does not say (blockwise measures every step) counts every step
    plain = conflict_map([{k: v for k, v in line.items() if k != MEASURED_KEY}
                          for line in lines])
    assert (plain["steps"], plain["measured_steps"]) == (20, 20)
    assert "(over 20 steps)." in markdown_lines(plain)[0]
    with pytest.raises(ConfigError, match=r"log line 2: conflict_blocks/measured is 1\.5"):
        conflict_map([lines[0], {**lines[1], MEASURED_KEY: 1.5}])


def test_a_multi_batch_combiner_logs_the_cosines_of_the_batches_mean():
    model = Exits()
    surgery = Surgery(model, None, "modo", include=["layers.0.*"], conflict_blocks="per_layer")
    batches = [exit_losses(model, seed=s) for s in (1, 2, 3)]
    params = list(model.layers[0].parameters())
    mean = {name: sum(torch.cat([g.flatten() for g in torch.autograd.grad(
        batch[name], params, retain_graph=True)]).double() for batch in batches) / 3
        for name in EXITS}
    cosine = torch.nn.functional.cosine_similarity(mean["exit1"], mean["exit3"], dim=0)
    surgery.backward(batches)
    logged = block_keys(surgery.diagnostics)
    assert sorted(logged) == sorted(f"{m}/layers.0/{a}/{b}" for m in ("cosine", "conflict")
                                    for a, b in (("exit1", "exit2"), ("exit1", "exit3"),
                                                 ("exit2", "exit3")))
    assert logged["cosine/layers.0/exit1/exit3"] == pytest.approx(float(cosine), abs=1e-6)
    # a stack of Gramians: each as on its own
    stack = torch.randn(4, 6, 6, dtype=torch.float64)
    assert torch.equal(batch_mean_gramian(stack, 3)[2], batch_mean_gramian(stack[2], 3))


@pytest.mark.parametrize(("options", "groups", "message"), [
    ({"combiner": "sum"}, EXITS, "conflict_blocks: combiner 'sum' never builds the gradient "
     "matrix"),
    ({"combiner": "upgrad"}, ["exit1"], "conflict_blocks: the step has 1 loss group(s)"),
    ({"combiner": "upgrad", "conflict_blocks": ["layers.0.*", "exits.*"]}, EXITS,
     "conflict_blocks: parameter 'layers.1.weight' matches no block"),
])
def test_an_option_that_would_log_nothing_is_one_line(options, groups, message):
    model = Exits()
    options = {"conflict_blocks": "per_layer", **options}
    surgery = Surgery(model, None, options.pop("combiner"), include=LAYERS, **options)
    losses = exit_losses(model)
    with pytest.raises(ConfigError) as error:
        surgery.backward({name: losses[name] for name in groups})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("blocks", ["per_block", [], ["layers.*", 3]])
def test_a_bad_blocks_value_is_refused_when_the_surgery_is_built(blocks):
    with pytest.raises(ConfigError, match=r"^conflict_blocks must be "):
        Surgery(Exits(), None, "upgrad", conflict_blocks=blocks)


# ---- the recipe key ------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    (["mode=deebert", "combiner=null"],
     "key 'conflict_blocks': mode deebert trains one loss group per stage"),
    (["mode=pabee", "combiner=null"],
     "key 'conflict_blocks': mode pabee trains the single loss group"),
    (["conflict_blocks=per_block"], "key 'conflict_blocks': must be 'per_layer' or a list"),
])
def test_the_recipe_key_is_refused_where_it_would_log_nothing(overrides, message, tmp_path):
    assert_run_refuses(["conflict_blocks=per_layer", *overrides], message, tmp_path / "out")


def block_lines(folder) -> list[dict]:
    records = [json.loads(text) for text in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("conflict/")} for r in records]


@pytest.mark.slow
def test_a_run_with_the_key_logs_the_map_and_compare_draws_it(tmp_path, tiny_bert_dir,
                                                               shared_glue_dir):
    """romebert (project, final vs sd) logs every step; romebert_sd (sum, the matrix skipped)
    one step per log line; compare draws both maps."""
    runs = {}
    for mode, log_every in (("romebert", 1), ("romebert_sd", 2)):
        recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode=mode, train_rows=32,
                             log_every=log_every, conflict_blocks="per_layer")
        runs[mode] = tmp_path / mode
        result = invoke("run", recipe, "--output", runs[mode], "--set", "save_model=false")
        assert result.exit_code == 0, result.output
    # 4 steps; 3 layers: the SD loss of exits 1 and 2 and the final loss meet in layers 0, 1
    pairs = {f"conflict/encoder.layers.{i}/final/sd" for i in (0, 1)}
    assert [set(line) for line in block_lines(runs["romebert"])] == [pairs] * 4
    assert [set(line) for line in block_lines(runs["romebert_sd"])] == [pairs] * 2
    out = tmp_path / "compare"
    result = compare(*runs.values(), "--output", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert len(data["conflict_maps"]) == 2
    for stored in data["conflict_maps"].values():
        assert stored["blocks"] == ["encoder.layers.0", "encoder.layers.1"]
        assert stored["pairs"] == ["final/sd"] and stored["steps"] == 4
        assert (out / stored["plot"]).read_bytes().startswith(b"\x89PNG")
    # the sum measured one step per log line, project every step
    assert sorted(stored["measured_steps"] for stored in data["conflict_maps"].values()) == [
        2, 4]
