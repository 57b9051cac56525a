"""`sdmgrad` and `modo`, the combiners that take three independent batches per step: torchjd
0.18's SDMGradWeighting / MoDoWeighting step by step, a NumPy rendering of each paper's
update, the properties that survive genuinely cross-batch input (and the one that does not),
`Surgery.backward` with one loss mapping per batch, its refusals, and the training loops that
feed three batches a step. The shared properties and the state round trip: the table in
combiner_checks.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from combiner_checks import simplex_projection
from models import ThreeGroupNet, three_group_batch

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS, MoDo, SDMGrad
from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.programs.training import epoch_steps, step_groups

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["a", "b", "c"]


def batches(seed: int, k: int = 3, n: int = 7, steps: int = 6) -> list[list[torch.Tensor]]:
    """`steps` triples of independent float64 `[k, n]` Jacobians (J1, J2, J3)."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(k, n, generator=generator, dtype=torch.float64) for _ in range(3)]
            for _ in range(steps)]


def ours(combiner, triple: list[torch.Tensor]) -> np.ndarray:
    names = NAMES[: triple[0].shape[0]]
    return combiner(torch.cat(triple), names).gradient.numpy()


# ---- torchjd 0.18 ---------------------------------------------------------------------------


SDMGRAD_OPTIONS = [{}, {"lr": 3.0, "momentum": 0.0, "n_iter": 7, "lam": 1.5},
                   {"lr": 0.5, "momentum": 0.9, "n_iter": 1, "lam": 0.0}]


@pytest.mark.parametrize("options", SDMGRAD_OPTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_sdmgrad_agrees_with_torchjd_step_by_step(options, seed):
    """Same J1 J2^T each step, weights carried by both: ours is k times w @ J3."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    renamed = {"n_iter": "n_iter", "lam": "lambda_", "lr": "lr", "momentum": "momentum"}
    theirs = aggregation.SDMGradWeighting(**{renamed[k]: v for k, v in options.items()})
    combiner = SDMGrad(**options)
    for j1, j2, j3 in batches(seed):
        expected = 3 * (theirs(j1 @ j2.T) @ j3).numpy()
        np.testing.assert_allclose(ours(combiner, [j1, j2, j3]), expected, rtol=0,
                                   atol=1e-10 * np.abs(expected).max())


def test_sdmgrad_with_a_preference_agrees_with_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    preference = {"a": 0.6, "b": 0.3, "c": 0.1}
    theirs = aggregation.SDMGradWeighting(pref_vector=torch.tensor([0.6, 0.3, 0.1],
                                                                    dtype=torch.float64))
    combiner = SDMGrad(preference=preference)
    for j1, j2, j3 in batches(2):
        expected = 3 * (theirs(j1 @ j2.T) @ j3).numpy()
        np.testing.assert_allclose(ours(combiner, [j1, j2, j3]), expected, rtol=0,
                                   atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("options", [{}, {"gamma": 0.5, "rho": 0.0}, {"gamma": 0.02, "rho": 2}])
@pytest.mark.parametrize("seed", [0, 1])
def test_modo_agrees_with_torchjd_step_by_step(options, seed):
    aggregation = pytest.importorskip("torchjd.aggregation")
    theirs = aggregation.MoDoWeighting(**options)
    combiner = MoDo(**options)
    for j1, j2, j3 in batches(seed):
        expected = 3 * (theirs(j1 @ j2.T) @ j3).numpy()
        np.testing.assert_allclose(ours(combiner, [j1, j2, j3]), expected, rtol=0,
                                   atol=1e-10 * np.abs(expected).max())


# ---- the papers' updates in NumPy -----------------------------------------------------------


def test_modo_is_the_papers_algorithm_1():
    """lambda <- Proj(lambda - gamma (grad F_z1^T grad F_z2 lambda + rho lambda)); the step
    along grad F_z3 lambda (here times k: the sum's scale)."""
    gamma, rho = 0.3, 0.05
    combiner = MoDo(gamma=gamma, rho=rho)
    lam = np.full(3, 1 / 3)
    for j1, j2, j3 in batches(4):
        a, b, c = (j.numpy() for j in (j1, j2, j3))
        lam = simplex_projection(lam - gamma * (a @ (b.T @ lam) + rho * lam))
        np.testing.assert_allclose(ours(combiner, [j1, j2, j3]), 3 * c.T @ lam, atol=1e-12)


def test_sdmgrad_without_momentum_is_the_papers_algorithm_1():
    """S inner steps w <- Proj(w - beta grad L_xi^T (grad L_xi' (w + lam w~))), warm-started
    from the last step's w; d = grad L_zeta (w + lam w~) / (1 + lam) (times k). beta is lr
    over the normalization the official code applies, s^2 + 1e-8."""
    lr, lam, steps = 4.0, 0.7, 6
    combiner = SDMGrad(lr=lr, momentum=0.0, n_iter=steps, lam=lam)
    w, preferred = np.full(3, 1 / 3), np.full(3, 1 / 3)
    for j1, j2, j3 in batches(5):
        a, b, c = (j.numpy() for j in (j1, j2, j3))
        s = np.mean(np.sqrt(np.maximum((a * b).sum(1), 0)))
        beta = lr / (s**2 + 1e-8)
        for _ in range(steps):
            w = simplex_projection(w - beta * (a @ (b.T @ (w + lam * preferred))))
        expected = 3 * c.T @ (w + lam * preferred) / (1 + lam)
        np.testing.assert_allclose(ours(combiner, [j1, j2, j3]), expected, atol=1e-11)


def test_sdmgrad_weights_reach_mgda_and_the_preference_at_the_ends():
    """lam = 0 with one fixed batch thrice: w is MGDA's min-norm weights; large lam: the
    direction is the preferred sum."""
    j = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    out = SDMGrad(lam=0.0, n_iter=400, lr=0.5)(torch.cat([j, j, j]), ["a", "b"]).gradient
    # min-norm point of the segment (1, 0) - (0, 2): weights (0.8, 0.2), point (0.8, 0.4)
    torch.testing.assert_close(out, 2 * torch.tensor([0.8, 0.4], dtype=torch.float64))
    out = SDMGrad(lam=1e9)(torch.cat([j, j, j]), ["a", "b"]).gradient
    torch.testing.assert_close(out, j.sum(0), rtol=1e-8, atol=0)


# ---- properties on independent batches ------------------------------------------------------


@pytest.mark.parametrize("make", [SDMGrad, MoDo])
def test_one_group_order_for_all_batches_does_not_matter(make):
    order = [2, 0, 1]
    first, second = make(), make()
    for triple in batches(6):
        names = NAMES
        out = first(torch.cat(triple), names).gradient
        shuffled = second(torch.cat([j[order] for j in triple]),
                          [names[i] for i in order]).gradient
        torch.testing.assert_close(out, shuffled, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [SDMGrad, MoDo])
def test_the_order_of_the_batches_matters(make):
    """Batches 1 and 2 give the weights (A or A^T), batch 3 the direction: not symmetric."""
    j1, j2, j3 = batches(7, steps=1)[0]
    out = ours(make(), [j1, j2, j3])
    assert not np.allclose(out, ours(make(), [j2, j1, j3]))
    assert not np.allclose(out, ours(make(), [j3, j2, j1]))


@pytest.mark.parametrize("make", [SDMGrad, MoDo])
def test_one_group_or_identical_rows_give_the_third_batchs_sum(make):
    for j1, j2, j3 in batches(8, k=1, steps=3):
        np.testing.assert_allclose(ours(make(), [j1, j2, j3]), j3[0].numpy(), atol=1e-12)
        rows = [j.repeat(3, 1) for j in (j1, j2, j3)]
        np.testing.assert_allclose(ours(make(), rows), 3 * j3[0].numpy(), atol=1e-12)


@pytest.mark.parametrize("make", [SDMGrad, MoDo])
def test_finite_when_the_cross_diagonal_is_negative_or_extreme(make):
    """Cross-batch rows may disagree (A_ii < 0, so sdmgrad's s may be 0) or be 1e-30..1e15."""
    j = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    for scale in (1e-30, 1.0, 1e15):
        out = make()(torch.cat([j, -j, j]) * scale, ["a", "b"]).gradient
        assert torch.isfinite(out).all() and out.dtype == torch.float32
    out = make()(torch.zeros(6, 3), ["a", "b"]).gradient
    assert torch.equal(out, torch.zeros(3))


def test_a_stacked_matrix_of_the_wrong_height_is_refused():
    with pytest.raises(ValueError, match=r"expected a \[3 x 2, n\] matrix, got \(4, 5\)"):
        SDMGrad()(torch.zeros(4, 5), ["a", "b"])


# ---- Surgery: one loss mapping per batch ---------------------------------------------------


def three_batches(model, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return [model.losses(*three_group_batch(seed + 10 * index)) for index in range(3)]


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_surgery_gives_the_combiner_each_batchs_rows(name):
    """The selected parameters (the trunk) get the combiner's output on the three batches'
    Jacobians, computed here by autograd; the heads (one group each) the mean over the
    batches of their plain sums; `losses` each group's mean over the batches."""
    model = ThreeGroupNet()
    trunk = list(model.trunk.parameters())
    heads = [p for module in (model.a, model.b, model.c) for p in module.parameters()]
    jacobians, head_sums, means = [], [torch.zeros_like(p) for p in heads], {}
    for losses in three_batches(model):
        rows = []
        for group, loss in losses.items():
            grads = torch.autograd.grad(loss, trunk + heads, retain_graph=True,
                                        allow_unused=True)
            rows.append(torch.cat([g.flatten() for g in grads[: len(trunk)]]))
            for total, grad in zip(head_sums, grads[len(trunk):]):
                if grad is not None:
                    total += grad / 3
            means[group] = means.get(group, 0.0) + float(loss.detach()) / 3
        jacobians.append(torch.stack(rows))
    expected = COMBINERS.build(name, where="c")(torch.cat(jacobians), NAMES).gradient

    surgery = Surgery(model, None, name)
    surgery.backward(three_batches(model))
    assert surgery.selected_names == ["trunk.0.weight", "trunk.0.bias"]  # batch 1 decides
    got = torch.cat([p.grad.flatten() for p in trunk])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    for p, total in zip(heads, head_sums):
        torch.testing.assert_close(p.grad, total, rtol=1e-5, atol=1e-7)
    assert surgery.losses == pytest.approx(means, rel=1e-6)
    assert {"grad_norm/a", "cosine/a/b", f"{name}/largest_weight"} <= set(surgery.diagnostics)


def test_surgery_state_round_trips_with_three_batches():
    """Two steps, Surgery's state through a checkpoint into a fresh one: the third step's
    gradients equal an uninterrupted run's."""
    from state_checks import through_a_weights_only_checkpoint

    grads = []
    for interrupted in (False, True):
        model = ThreeGroupNet()
        surgery = Surgery(model, None, {"name": "modo", "gamma": 5.0})
        for step in range(2):
            surgery.backward(three_batches(model, step))
            model.zero_grad()
        if interrupted:
            state = through_a_weights_only_checkpoint(surgery.state_dict())
            surgery = Surgery(model, None, {"name": "modo", "gamma": 5.0})
            surgery.load_state_dict(state)
        surgery.backward(three_batches(model, 2))
        grads.append(model.trunk[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_a_bad_row_is_named_with_its_batch():
    model = ThreeGroupNet()
    surgery = Surgery(model, None, "sdmgrad", nonfinite="raise")
    batch = three_batches(model)
    batch[2] = model.losses(*three_group_batch(5), float("nan"))
    with pytest.raises(GradsurgError, match=r"gradient of loss group\(s\) b@3 not finite"):
        surgery.backward(batch)


def test_wrong_batch_counts_are_refused_in_one_line():
    model = ThreeGroupNet()
    one = model.losses(*three_group_batch(0))
    cases = [
        ("sdmgrad", one, r"combiner 'sdmgrad' needs 3 independent batches per step .*got "
                         r"one batch; call surgery.backward\(\[losses_1, \.\.\., losses_3\]\)"),
        ("modo", [one, one], r"combiner 'modo' needs 3 .*got 2 batches"),
        ("upgrad", [one, one, one], r"got 3 batches' losses, but combiner 'upgrad' takes one "
                                    r"batch per step"),
        ("modo", [one, one, {"a": one["a"], "c": one["c"], "b": one["b"]}],
         r"batch 3 gives the loss groups \['a', 'c', 'b'\], batch 1 \['a', 'b', 'c'\]"),
    ]
    for name, losses, message in cases:
        with pytest.raises(GradsurgError, match=message):
            Surgery(model, None, name).backward(losses)
    with pytest.raises(GradsurgError, match=r"share: a list of 2 shares, one per batch, but "
                                            r"combiner 'modo' takes 3"):
        Surgery(model, None, "modo").backward([one, one, one], share=[0.5, 0.5])


def test_a_weighting_or_a_nesting_combiner_is_refused():
    model = ThreeGroupNet()
    with pytest.raises(ConfigError, match=r"combiner 'sdmgrad' takes 3 batches per step, "
                                          "which a loss weighting does not support"):
        Surgery(model, None, "sdmgrad", weighting="dwa")
    for spec in ({"name": "cr_mogm", "inner": "modo"},
                 {"name": "blockwise", "inner": "sdmgrad"},
                 {"name": "merge", "groups": ["a", "b"], "inner": "modo", "into": "ab",
                  "then": "sum"}):
        with pytest.raises(ConfigError, match=r"combiner\.inner: combiner '(modo|sdmgrad)' "
                                              r"needs 3 batches per step and cannot run inside"):
            COMBINERS.build(spec, where="combiner")
    from gradsurg.combiners import CRMOGM

    with pytest.raises(ConfigError, match="cannot run inside 'cr_mogm'"):
        CRMOGM(inner=MoDo())


def test_the_integrations_refuse_a_multi_batch_combiner():
    """Trainer, Lightning and the Accelerate helper hand gradsurg one batch per backward."""
    from gradsurg.integrations.accelerate import backward
    from gradsurg.integrations.groups import refuse_multi_batch

    with pytest.raises(ConfigError, match=r"combiner 'modo' needs 3 independent batches per "
                                          r"optimizer step, but Lightning's backward hook"):
        refuse_multi_batch(MoDo(), framework="Lightning's backward hook")
    refuse_multi_batch(COMBINERS.build("upgrad", where="c"), framework="x")  # one batch: fine
    model = ThreeGroupNet()
    surgery = Surgery(model, None, "sdmgrad")
    with pytest.raises(ConfigError, match=r"'sdmgrad' needs 3 .*but gradsurg\.integrations"
                                          r"\.accelerate\.backward hands"):
        backward(object(), surgery, model.losses(*three_group_batch(0)))


@pytest.mark.parametrize("kind", ["transformers", "lightning"])
def test_trainer_and_lightning_refuse_before_the_first_step(kind):
    """The refusal sits where each builds its Surgery: checked in the source, since building
    a Trainer or a Lightning run here costs seconds (test_integrations.py runs them)."""
    import inspect

    module = pytest.importorskip(f"gradsurg.integrations.{kind}")
    source = inspect.getsource(module)
    surgery_built = source.index("self.surgery = Surgery(")
    refusal = source.index("refuse_multi_batch(self.surgery.combiner", surgery_built)
    assert source[surgery_built:refusal].count("\n") <= 3


# ---- the training loops ---------------------------------------------------------------------


def test_an_epoch_has_a_third_of_the_steps_and_whole_groups_only():
    assert epoch_steps(10, 1, combiner="sum") == 10
    assert epoch_steps(10, 3, combiner="modo") == 3
    with pytest.raises(ConfigError, match=r"combiner 'sdmgrad' takes 3 batches per optimizer "
                                          r"step, but an epoch has 2; lower batch_size"):
        epoch_steps(2, 3, combiner="sdmgrad")
    pairs = [({"i": torch.tensor(i)}, None) for i in range(7)]
    groups = list(step_groups(iter(pairs), 3))
    assert [[int(batch["i"]) for batch, _ in group] for group in groups] == [[0, 1, 2],
                                                                            [3, 4, 5]]


def test_a_recipe_with_a_weighting_and_a_multi_batch_combiner_is_refused(tmp_path):
    from cli_runs import assert_run_refuses

    assert_run_refuses(["combiner=sdmgrad", "weighting=dwa"],
                       "key 'weighting': the combiner takes 3 batches per step, which a loss "
                       "weighting does not support", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["sdmgrad", "modo"])
def test_each_trains_a_tiny_romebert_recipe_three_batches_a_step(combiner, tiny_bert_dir,
                                                                 shared_glue_dir, tmp_path):
    """48 rows in batches of 8: 6 batches, so 2 optimizer steps an epoch."""
    import math

    from glue_configs import short_glue_config

    from gradsurg.programs.multiexit_glue import run as run_glue

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", epochs=1,
                               train_rows=48, combiner=combiner)
    results = run_glue(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 2
    assert all(math.isfinite(m["accuracy"]) for m in results["exit_metrics"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(line["skipped_steps"] == 0 for line in log)
    assert all(f"{combiner}/largest_weight" in line and "loss/final" in line for line in log)


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["sdmgrad", "modo"])
def test_each_trains_the_digits_recipe(combiner, tmp_path):
    """Six epochs, a third of the steps (7 an epoch): every exit well above chance (0.1)."""
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", [f"combiner={combiner}", "epochs=6"])
    results = train(config, tmp_path)
    batches_per_epoch = -(-1347 // config.batch_size)  # 1347 training rows
    assert results["steps"] == 6 * (batches_per_epoch // 3)
    assert min(results["exit_accuracy"]) > 0.5, results["exit_accuracy"]  # chance is 0.1
