"""Gradient equilibrium (Li et al., ICCV 2019) on the multi-exit model: each layer's parameters
get the mean of the per-exit gradients of the exits that reach them (computed here exit by
exit with autograd), which is also `blockwise` with `inner: mean` over per-exit groups; the
forward pass, the top layer and the exits' own gradients are unchanged; it composes with a
combiner; it is saved with the model; the recipe key trains and is refused where it would do
nothing."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModel

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS
from gradsurg.errors import ConfigError
from gradsurg.multiexit.backbones import tiny_config
from gradsurg.multiexit.model import MultiExitConfig, MultiExitModel

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 3


def build(model_type: str = "bert", *, layers: int = LAYERS, shared_exit: bool = False,
          gradient_equilibrium: bool = False) -> MultiExitModel:
    """A tiny random multi-exit model in float64 (dropout off, so two passes agree)."""
    torch.manual_seed(0)
    hf = AutoModel.from_config(tiny_config(model_type, num_layers=layers))
    config = MultiExitConfig(num_labels=3, pooling="mean", shared_exit=shared_exit)
    return MultiExitModel(hf, config, gradient_equilibrium=gradient_equilibrium).double().eval()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (4, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    return ids * mask, mask, torch.randint(0, 3, (4,), generator=generator)


def exit_losses(model: MultiExitModel) -> list[torch.Tensor]:
    ids, mask, labels = batch()
    return [torch.nn.functional.cross_entropy(x, labels) for x in model(ids, mask)]


def reaching(name: str, num_exits: int) -> range | None:
    """The (0-based) exits whose loss flows into parameter `name` through the layers; None for
    the exits' own parameters and for MPNet's relative position bias, which every layer uses
    (it gets the sum over its uses of each use's mean, not one mean)."""
    layer = re.match(r"encoder\.layers\.(\d+)\.", name)
    if layer:
        return range(int(layer[1]), num_exits)
    return range(num_exits) if name.startswith("encoder.embeddings.") else None


def per_exit_gradients(model: MultiExitModel) -> list[dict[str, torch.Tensor]]:
    """Each exit's loss differentiated on its own (zeros where it does not reach)."""
    names, params = zip(*model.named_parameters())
    losses = exit_losses(model)
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append({n: torch.zeros_like(p) if g is None else g
                     for n, p, g in zip(names, params, grads)})
    return rows


def summed_backward(model: MultiExitModel) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.stack(exit_losses(model)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_each_layer_gets_the_mean_of_the_exits_reaching_it(model_type):
    model = build(model_type)
    rows = per_exit_gradients(model)  # equilibrium off: the plain per-exit gradients
    model.gradient_equilibrium = True
    got = summed_backward(model)
    checked = 0
    for name, grad in got.items():
        exits = reaching(name, model.num_exits)
        if exits is None:
            if name.startswith("exits."):  # the heads: their own gradient, never rescaled
                torch.testing.assert_close(grad, sum(r[name] for r in rows), rtol=0, atol=1e-12)
            continue
        mean = sum(rows[m][name] for m in exits) / len(exits)
        torch.testing.assert_close(grad, mean, rtol=0, atol=1e-12)
        checked += 1
    assert checked > 10
    # the sum (equilibrium off) is another gradient at every layer below the top one
    first = "encoder.layers.0.attention.self.query.weight" if model_type == "bert" else \
        "encoder.layers.0.attention.attn.q.weight"
    assert not torch.allclose(got[first], sum(r[first] for r in rows), atol=1e-6)


def test_top_layer_heads_and_a_one_layer_model_are_unchanged():
    plain = summed_backward(build())
    balanced = summed_backward(build(gradient_equilibrium=True))
    for name, grad in plain.items():
        if name.startswith((f"encoder.layers.{LAYERS - 1}.", "exits.")):
            assert torch.equal(balanced[name], grad), name  # bit for bit
    one = summed_backward(build(layers=1))
    one_balanced = summed_backward(build(layers=1, gradient_equilibrium=True))
    assert all(torch.equal(one_balanced[n], g) for n, g in one.items())


def test_a_shared_exit_gets_its_plain_gradient():
    plain = summed_backward(build(shared_exit=True))
    balanced = summed_backward(build(shared_exit=True, gradient_equilibrium=True))
    head = [n for n in plain if n.startswith("exits.")]
    assert head and all(torch.allclose(balanced[n], plain[n], rtol=0, atol=1e-12) for n in head)
    assert not torch.allclose(balanced["encoder.layers.0.output.dense.weight"],
                              plain["encoder.layers.0.output.dense.weight"], atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "albert"])
def test_forward_outputs_are_bitwise_unchanged_on_every_backbone(model_type):
    ids, mask, _ = batch()
    plain = build(model_type)
    balanced = build(model_type, gradient_equilibrium=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            for a, b in zip(plain(ids, mask), balanced(ids, mask), strict=True):
                assert torch.equal(a, b)
    grads = summed_backward(balanced)  # ALBERT's shared layer included
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_equals_blockwise_mean_over_per_exit_groups(mode):
    """Equilibrium's one backward pass = `blockwise` (`inner: mean`, a block per layer) on the
    plain model's per-exit rows, with either backward path of the rows."""
    plain = build()
    surgery = Surgery(plain, None, {"name": "blockwise", "inner": "mean", "blocks": "per_layer"},
                      include=["encoder.*"], mode=mode)
    surgery.backward({f"exit{i + 1}": loss for i, loss in enumerate(exit_losses(plain))})
    surgery.remove()
    balanced = summed_backward(build(gradient_equilibrium=True))
    for name, p in plain.named_parameters():
        torch.testing.assert_close(balanced[name], p.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["sequential", "batched"])
def test_composes_with_a_combiner_on_per_exit_groups(mode):
    """With equilibrium exit m's row is its plain gradient divided, at layer j, by the number
    of exits reaching layer j; UPGrad then combines those rows (the layers it selects), and
    the other parameters get the rows' sum: equilibrium's mean."""
    reference = build()
    rows = per_exit_gradients(reference)
    model = build(gradient_equilibrium=True)
    surgery = Surgery(model, None, "upgrad", include=["encoder.layers.*"], mode=mode)
    surgery.backward({f"exit{i + 1}": loss for i, loss in enumerate(exit_losses(model))})
    surgery.remove()
    selected = [n for n, _ in model.named_parameters() if n.startswith("encoder.layers.")]
    scaled = torch.stack([torch.cat([
        row[n].flatten() / len(reaching(n, LAYERS)) for n in selected]) for row in rows])
    names = [f"exit{i + 1}" for i in range(LAYERS)]
    expected = COMBINERS.build("upgrad", where="combiner")(scaled, names).gradient
    params = dict(model.named_parameters())
    got = torch.cat([params[n].grad.flatten() for n in selected])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    for name in params:
        exits = reaching(name, LAYERS)
        if name.startswith("encoder.embeddings."):
            mean = sum(rows[m][name] for m in exits) / len(exits)
            torch.testing.assert_close(params[name].grad, mean, rtol=0, atol=1e-12)


def test_saved_and_restored_with_the_model(tmp_path):
    model = build(gradient_equilibrium=True)
    folder = model.save_pretrained(tmp_path / "model")
    reloaded = MultiExitModel.from_pretrained(folder).double().eval()
    assert reloaded.gradient_equilibrium and reloaded.config == model.config
    before, after = summed_backward(model), summed_backward(reloaded)
    assert all(torch.equal(after[n], g) for n, g in before.items())


def test_a_config_without_the_key_is_off_and_a_bad_value_is_refused():
    assert not MultiExitConfig.from_dict({"num_labels": 2}).gradient_equilibrium
    with pytest.raises(ConfigError, match="gradient_equilibrium=1 is invalid"):
        MultiExitConfig(num_labels=2, gradient_equilibrium=1)
    model = build()
    with pytest.raises(ConfigError, match="gradient_equilibrium='yes' is invalid"):
        model.gradient_equilibrium = "yes"
    assert not model.gradient_equilibrium


@pytest.mark.parametrize(("overrides", "message"), [
    (["mode=deebert"], "mode deebert's stage stage1 trains the final exit alone"),
    (["mode=deebert_sd"], "stage stage2 freezes the encoder"),
    (["loss_groups={final: final_task}", "combiner=null"], "every loss group is the final"),
    (["gradient_equilibrium=3"], "key 'gradient_equilibrium'"),
])
def test_recipes_where_it_would_do_nothing_are_one_line_errors(overrides, message):
    from cli_runs import ROMEBERT_RECIPE, one_line_error

    args: list[object] = ["validate", ROMEBERT_RECIPE, "--set", "gradient_equilibrium=true"]
    for item in overrides:
        args += ["--set", item]
    one_line_error(args, message)


def test_a_one_layer_model_is_refused_before_training(tmp_path, shared_glue_dir):
    from glue_configs import tiny_glue_config
    from transformers import AutoTokenizer

    from gradsurg.multiexit.backbones import resolve_backbone
    from gradsurg.programs.multiexit_glue import run

    folder = tmp_path / "one-layer"
    AutoModel.from_config(tiny_config("bert", num_layers=1)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(folder)
    config = tiny_glue_config(folder, shared_glue_dir, gradient_equilibrium=True)
    with pytest.raises(ConfigError, match="has one layer and so one exit"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


@pytest.mark.slow
def test_the_recipe_key_trains_another_model(tiny_bert_dir, shared_glue_dir, tmp_path):
    from cli_runs import invoke, tiny_recipe
    from safetensors.torch import load_file

    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
                         checkpoints=False)
    weights = {}
    for name, extra in (("plain", []), ("ge", ["--set", "gradient_equilibrium=true"])):
        result = invoke("run", recipe, "--output", tmp_path / name, *extra)
        assert result.exit_code == 0, result.output
        weights[name] = load_file(tmp_path / name / "model" / "model.safetensors")
    config = MultiExitModel.from_pretrained(tmp_path / "ge" / "model").config
    assert config.gradient_equilibrium
    top = f"encoder.layers.{LAYERS - 1}.output.dense.weight"
    assert not torch.equal(weights["ge"]["encoder.layers.0.output.dense.weight"],
                           weights["plain"]["encoder.layers.0.output.dense.weight"])
    assert not torch.equal(weights["ge"][top], weights["plain"][top])  # later steps differ


# ---- the building block on another multi-exit model (the digits plugin's MLP) --------------


def test_any_multi_exit_forward_gets_each_layers_mean_from_the_building_block():
    """`equilibrium_branches` in the digits plugin's MLP: each layer's parameters get the mean
    of the exit gradients reaching them (autograd exit by exit), the exits their own."""
    from gradsurg_digits.model import MultiExitMLP

    torch.manual_seed(0)
    plain = MultiExitMLP(inputs=5, hidden=7, layers=4, classes=3).double()
    balanced = MultiExitMLP(inputs=5, hidden=7, layers=4, classes=3,
                            gradient_equilibrium=True).double()
    balanced.load_state_dict(plain.state_dict())
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    params = dict(plain.named_parameters())
    per_exit = [torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y),
                                    list(params.values()), allow_unused=True,
                                    retain_graph=True)
                for logits in plain(x)]
    outputs = balanced(x)
    for got, want in zip(outputs, plain(x), strict=True):
        assert torch.equal(got, want)  # the forward pass is unchanged
    sum(torch.nn.functional.cross_entropy(logits, y) for logits in outputs).backward()
    for index, (name, param) in enumerate(dict(balanced.named_parameters()).items()):
        layer = int(name.split(".")[1])
        reaching = range(layer, 4) if name.startswith("layers.") else [layer]  # exits: own
        expected = sum(per_exit[e][index] for e in reaching) / (
            len(reaching) if name.startswith("layers.") else 1)
        torch.testing.assert_close(param.grad, expected, rtol=1e-12, atol=1e-14)


def test_the_building_block_refuses_a_layer_outside_the_network():
    from gradsurg.multiexit.equilibrium import equilibrium_branches

    with pytest.raises(ValueError, match=r"layer index 4 is outside 0\.\.3"):
        equilibrium_branches(torch.ones(2, requires_grad=True), 4, 4)


def test_the_digits_recipe_trains_with_gradient_equilibrium(tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, plain_config = load_recipe("digits_project", ["epochs=2"])
    _, config = load_recipe("digits_project", ["epochs=2", "gradient_equilibrium=true"])
    balanced, plain = train(config, tmp_path), train(plain_config, None)
    assert min(balanced["exit_accuracy"]) > 0.5, balanced["exit_accuracy"]  # chance is 0.1
    assert balanced["exit_accuracy"] != plain["exit_accuracy"]  # the rule changed training
