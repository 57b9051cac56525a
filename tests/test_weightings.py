"""Loss weightings: each update rule against a plain numpy rendering of its paper's formula
(and TorchJD 0.18's scalarizer where it has one) over several steps, state through a
`weights_only` checkpoint, composition with `pcgrad`, learned weights trained by the optimizer,
one-line errors, and every method in the digits and a tiny RomeBERT recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchjd.scalarization as tjd
from glue_configs import short_glue_config
from state_checks import through_a_weights_only_checkpoint
from torch import nn

from gradsurg import Surgery
from gradsurg.errors import ConfigError
from gradsurg.weightings import WEIGHTINGS

GROUPS = ["final", "sd"]
WHERE = "key 'weighting'"  # the recipe key a weighting's errors name
METHODS = ["uncertainty", "dwa", "famo", "geometric", "imtll", "stch"]


def leaves(values) -> dict[str, torch.Tensor]:
    return {g: torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
            for g, v in zip(GROUPS, values)}


def multipliers(weighting, values) -> np.ndarray:
    """d(sum of the weighted losses) / d L_i: what group i's gradient row is scaled by."""
    losses = leaves(values)
    total = sum(weighting(losses).values())
    grads = torch.autograd.grad(total, list(losses.values()))
    return np.array([float(g) for g in grads])


def loss_stream(seed: int, steps: int, k: int = 2) -> np.ndarray:
    """Positive, slowly falling losses with noise: `[steps, k]`."""
    rng = np.random.default_rng(seed)
    trend = np.linspace(1.0, 0.4, steps)[:, None] * rng.uniform(0.5, 2.0, size=k)
    return trend * rng.uniform(0.8, 1.2, size=(steps, k))


#: Weightings of per-exit groups exit1..exitL: tests/test_exit_weightings.py; preference
#: scalarizations (weights may be negative): tests/test_scalarizers.py.
EXIT_METHODS = ["layerskip", "eellm_warmup"]
SCALARIZERS = ["pbi", "cosmos"]


def test_every_method_is_registered():
    assert set(WEIGHTINGS.names()) == set(METHODS) | set(EXIT_METHODS) | set(SCALARIZERS)
    for name in METHODS + EXIT_METHODS + SCALARIZERS:
        assert WEIGHTINGS.source(name) == "gradsurg"


# ---- update rules against numpy renderings ------------------------------------------------


@pytest.mark.parametrize("half", [True, False])
def test_uncertainty_matches_kendall_over_sgd_steps(half):
    """0.5 (e^-s L + s) (or e^-s L + s): the rows are c e^-s grad L_i, and s follows
    s <- s - lr c (1 - e^-s L) under SGD."""
    spec = {"name": "uncertainty", "half": half}
    weighting = WEIGHTINGS.build(spec, GROUPS, where=WHERE).double()
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.3)
    c = 0.5 if half else 1.0
    s = np.zeros(2)
    for values in loss_stream(0, 6):
        expected_rows = c * np.exp(-s)
        np.testing.assert_allclose(multipliers(weighting, values), expected_rows, rtol=1e-12)
        weighted = weighting(leaves(values))
        np.testing.assert_allclose([float(v.detach()) for v in weighted.values()],
                                   c * (np.exp(-s) * values + s), rtol=1e-12)
        optimizer.zero_grad()
        sum(weighted.values()).backward()
        optimizer.step()
        s = s - 0.3 * c * (1 - np.exp(-s) * values)
        np.testing.assert_allclose(weighting.log_vars.detach().numpy(), s, rtol=1e-12)
    assert not np.allclose(s, 0)


def test_uncertainty_equals_torchjd_uw():
    ours = WEIGHTINGS.build("uncertainty", GROUPS, where=WHERE).double()
    theirs = tjd.UW(2).double()
    with torch.no_grad():
        ours.log_vars.copy_(torch.tensor([0.3, -0.7]))
        theirs.log_var.copy_(torch.tensor([0.3, -0.7]))
    values = torch.tensor([1.7, 0.4], dtype=torch.float64, requires_grad=True)
    a = sum(ours(dict(zip(GROUPS, values.unbind()))).values())
    grads_ours = torch.autograd.grad(a, [values, ours.log_vars])
    b = theirs(values)
    grads_theirs = torch.autograd.grad(b, [values, theirs.log_var])
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-14)
    for x, y in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=0)


def test_imtll_matches_its_rule_and_torchjd():
    """e^s L - s: rows e^s grad L_i; s <- s - lr (e^s L - 1); equal to torchjd's IMTLL."""
    weighting = WEIGHTINGS.build("imtll", GROUPS, where=WHERE).double()
    reference = tjd.IMTLL(2).double()
    ours_opt = torch.optim.SGD(weighting.parameters(), lr=0.2)
    theirs_opt = torch.optim.SGD(reference.parameters(), lr=0.2)
    s = np.zeros(2)
    for values in loss_stream(1, 6):
        np.testing.assert_allclose(multipliers(weighting, values), np.exp(s), rtol=1e-12)
        ours_opt.zero_grad()
        sum(weighting(leaves(values)).values()).backward()
        ours_opt.step()
        theirs_opt.zero_grad()
        reference(torch.tensor(values)).backward()
        theirs_opt.step()
        s = s - 0.2 * (np.exp(s) * values - 1)
        np.testing.assert_allclose(weighting.scales.detach().numpy(), s, rtol=1e-12)
        np.testing.assert_allclose(reference.log_scale.detach().numpy(), s, rtol=1e-12)


def test_geometric_rows_are_the_gradient_of_the_geometric_mean():
    weighting = WEIGHTINGS.build("geometric", ["a", "b", "c"], where=WHERE)
    for values in loss_stream(2, 5, k=3):
        losses = {g: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for g, v in zip("abc", values)}
        weighted = weighting(losses)
        grads = torch.autograd.grad(sum(weighted.values()), list(losses.values()))
        mean = float(np.prod(values) ** (1 / 3))
        np.testing.assert_allclose([float(g) for g in grads], mean / (3 * values), rtol=1e-12)
        assert float(sum(weighted.values()).detach()) == pytest.approx(mean, rel=1e-12)
        theirs = torch.tensor(values, requires_grad=True)
        (expected,) = torch.autograd.grad(tjd.GeometricMean()(theirs), theirs)
        np.testing.assert_allclose([float(g) for g in grads], expected.numpy(), rtol=1e-12)


def dwa_reference(epoch_means: list[np.ndarray], temperature: float = 2.0, k: int = 2
                  ) -> np.ndarray:
    """Weights for the next epoch from the finished epochs' mean losses (Liu et al. 2019)."""
    if len(epoch_means) < 2:
        return np.ones(k)
    rate = epoch_means[-1] / epoch_means[-2]
    e = np.exp(rate / temperature)
    return k * e / e.sum()


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_dwa_follows_epoch_loss_ratios(temperature):
    weighting = WEIGHTINGS.build({"name": "dwa", "temperature": temperature}, GROUPS, where=WHERE)
    reference = tjd.DWA(temperature=temperature)
    stream = loss_stream(3, 20)
    stream[10:15, 1] *= 1.8  # group sd stalls in epoch 3
    means: list[np.ndarray] = []
    for epoch in range(5):
        batch = stream[4 * epoch:4 * epoch + 4]
        for values in batch:
            expected = dwa_reference(means, temperature)
            np.testing.assert_allclose(multipliers(weighting, values), expected, rtol=1e-12)
            theirs = torch.tensor(values, requires_grad=True)
            (grad,) = torch.autograd.grad(reference(theirs), theirs)
            np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12)
            weighting.step_end(torch.tensor(values))
        weighting.epoch_end()
        reference.step()
        means.append(batch.mean(axis=0))
    assert not np.allclose(dwa_reference(means, temperature), 1.0)
    assert weighting.describe()["weight/sd"] == pytest.approx(dwa_reference(means, temperature)[1])


def famo_reference(stream: np.ndarray, after: np.ndarray, *, lr: float, decay: float,
                   adam: bool, eps: float = 1e-8) -> tuple[list[np.ndarray], np.ndarray]:
    """FAMO (Liu et al. 2023, Algorithms 1 and 2) in numpy: the rows' weights at each step and
    the final logits."""
    k = stream.shape[1]
    xi, m, v = np.zeros(k), np.zeros(k), np.zeros(k)
    rows = []
    for t, (before, later) in enumerate(zip(stream, after), start=1):
        z = np.exp(xi - xi.max())
        z /= z.sum()
        d = before + eps
        rows.append((z / d) / (z / d).sum())
        delta = np.log(before + eps) - np.log(later + eps)
        jacobian = np.diag(z) - np.outer(z, z)
        g = jacobian.T @ delta + decay * xi
        if adam:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            xi = xi - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        else:
            xi = xi - lr * g
    return rows, xi


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_famo_logits_follow_the_log_loss_change(optimizer):
    params = {"name": "famo", "lr": 0.1, "weight_decay": 0.01, "optimizer": optimizer}
    weighting = WEIGHTINGS.build(params, ["a", "b", "c"], where=WHERE)
    stream = loss_stream(4, 8, k=3)
    after = stream * np.array([0.7, 0.95, 1.02])  # a falls fast, c rises
    rows, xi = famo_reference(stream, after, lr=0.1, decay=0.01, adam=optimizer == "adam")
    for values, later, expected in zip(stream, after, rows):
        losses = {g: torch.tensor(x, dtype=torch.float64, requires_grad=True)
                  for g, x in zip("abc", values)}
        grads = torch.autograd.grad(sum(weighting(losses).values()), list(losses.values()))
        np.testing.assert_allclose([float(g) for g in grads], expected, rtol=1e-10)
        weighting.step_end(torch.tensor(values), torch.tensor(later))
    np.testing.assert_allclose(weighting.logits.numpy(), xi, rtol=1e-10, atol=1e-14)
    z = weighting.task_weights().numpy()
    assert z[2] > z[1] > z[0]  # the group that improved least gets the most weight


def test_famo_equals_torchjd_famo_step_by_step():
    """TorchJD's FAMO (adapted from the official code): same rows, same Adam on the logits."""
    ours = WEIGHTINGS.build("famo", ["a", "b", "c"], where=WHERE)
    theirs = tjd.FAMO(3).double()
    stream = loss_stream(5, 10, k=3)
    after = stream * np.array([0.8, 0.9, 1.0])
    for values, later in zip(stream, after):
        x = torch.tensor(values, requires_grad=True)
        (expected,) = torch.autograd.grad(theirs(x), x)
        np.testing.assert_allclose(multipliers_k(ours, values), expected.numpy(), rtol=1e-10)
        theirs.update(torch.tensor(later))
        ours.step_end(torch.tensor(values), torch.tensor(later))
    np.testing.assert_allclose(ours.logits.numpy(), theirs._w.detach().numpy(), rtol=1e-9,
                               atol=1e-12)


def multipliers_k(weighting, values) -> np.ndarray:
    losses = {g: torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
              for g, v in zip(weighting.groups, values)}
    grads = torch.autograd.grad(sum(weighting(losses).values()), list(losses.values()))
    return np.array([float(g) for g in grads])


def stch_reference(values: np.ndarray, nadir: np.ndarray | None, mu: float,
                   preference: np.ndarray) -> np.ndarray:
    """d/dL of k mu log sum exp(lambda log(L / nadir) / mu) (Lin et al. 2024, eq. 9 with the
    official MTL code's normalization); sum log L during warm-up."""
    if nadir is None:
        return 1 / values
    y = preference * np.log(values / nadir) / mu
    p = np.exp(y - y.max())
    p /= p.sum()
    return len(values) * p * preference / values


@pytest.mark.parametrize(("mu", "warmup", "preference"), [(1.0, 1, None), (0.1, 2, [1.0, 3.0])])
def test_stch_warms_up_sets_the_nadir_and_follows_the_smooth_max(mu, warmup, preference):
    spec = {"name": "stch", "mu": mu, "warmup_epochs": warmup}
    if preference is not None:
        spec["preference"] = preference
    weighting = WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    lam = np.ones(2) if preference is None else np.array(preference)
    stream = loss_stream(6, 16)
    nadir = None
    for epoch in range(4):
        batch = stream[4 * epoch:4 * epoch + 4]
        for values in batch:
            expected = stch_reference(values, nadir, mu, lam)
            np.testing.assert_allclose(multipliers(weighting, values), expected, rtol=1e-10)
            if nadir is not None:  # the same as k x torchjd's STCH on the normalized logs
                x = torch.tensor(values, requires_grad=True)
                f = torch.log(x / torch.tensor(nadir))
                value = 2 * tjd.STCH(mu, weights=torch.tensor(lam))(f)
                (grad,) = torch.autograd.grad(value, x)
                np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-10)
            weighting.step_end(torch.tensor(values))
        weighting.epoch_end()
        if epoch == warmup - 1:
            nadir = batch.mean(axis=0)
    np.testing.assert_allclose(weighting.nadir.numpy(), stream[4 * (warmup - 1):4 * warmup]
                               .mean(axis=0), rtol=1e-12)


def test_stch_small_mu_puts_the_weight_on_the_worst_group():
    weighting = WEIGHTINGS.build({"name": "stch", "mu": 0.01}, GROUPS, where=WHERE)
    weighting.step_end(torch.tensor([1.0, 1.0]))
    weighting.epoch_end()
    rows = multipliers(weighting, [0.5, 0.9])  # sd is relatively worse (0.9 vs 0.5 of nadir)
    assert rows[1] == pytest.approx(2 / 0.9, rel=1e-6) and rows[0] < 1e-10


# ---- state through a weights_only checkpoint ------------------------------------------------


def drive(weighting, stream: np.ndarray, *, epochs_every: int = 3) -> None:
    """Forward, optimizer-free step hooks and epoch ends, as the training loop calls them."""
    for t, values in enumerate(stream, start=1):
        weighting(leaves(values))
        after = torch.tensor(values * 0.9) if weighting.needs_losses_after_step else None
        weighting.step_end(torch.tensor(values), after)
        if t % epochs_every == 0:
            weighting.epoch_end()


@pytest.mark.parametrize("name", METHODS)
def test_state_survives_a_weights_only_checkpoint(name):
    stream = loss_stream(7, 16)
    first = WEIGHTINGS.build(name, GROUPS, where=WHERE).double()
    with torch.no_grad():
        for p in first.parameters():
            p.add_(torch.tensor([0.25, -0.5], dtype=p.dtype))
    drive(first, stream[:9])
    second = WEIGHTINGS.build(name, GROUPS, where=WHERE).double()
    second.load_state_dict(through_a_weights_only_checkpoint(first.state_dict()))
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    drive(first, stream[9:])
    drive(second, stream[9:])
    np.testing.assert_array_equal(multipliers(first, [0.6, 0.3]), multipliers(second, [0.6, 0.3]))
    if name in ("dwa", "famo", "stch"):  # stateful: the state moved away from its start
        fresh = WEIGHTINGS.build(name, GROUPS, where=WHERE).double()
        assert not np.allclose(multipliers(fresh, [0.6, 0.3]), multipliers(first, [0.6, 0.3]))


# ---- composition with a combiner ----------------------------------------------------------


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1)])

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return {"final": ((self.heads[0](h).squeeze(-1) - y) ** 2).mean() + 0.1,
                "sd": ((self.heads[1](h).squeeze(-1) + y) ** 2).mean() + 0.1}


@pytest.mark.parametrize("name", METHODS)
def test_pcgrad_receives_the_weighted_rows(name, monkeypatch):
    from gradsurg.combiners.pcgrad import PCGrad

    model = TwoHeads()
    weighting = WEIGHTINGS.build(name, GROUPS, where=WHERE)
    with torch.no_grad():  # learned weights away from 1, so the rows really differ
        for p in weighting.parameters():
            p.copy_(torch.tensor([0.4, -0.3]))
    if name in ("dwa", "stch"):  # move the state past the start
        drive(weighting, loss_stream(8, 9))
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad", include=["shared.*"], weighting=weighting)
    seen = {}
    original = PCGrad.combine

    def spy(self, matrix, gram):
        seen["matrix"] = matrix.clone()
        return original(self, matrix, gram)

    monkeypatch.setattr(PCGrad, "combine", spy)
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.randn(16)
    raw = model.losses(x, y)
    shared = list(model.shared.parameters())
    expected = []
    for group in GROUPS:
        grads = torch.autograd.grad(raw[group], shared, retain_graph=True)
        expected.append(torch.cat([g.reshape(-1) for g in grads]))
    surgery.backward(raw, recompute=lambda: model.losses(x, y))  # weighs the raw losses
    factors = weighting.weights().to(torch.float32)  # what the backward applied
    optimizer.step()
    rows = seen["matrix"]
    assert rows.shape == (2, sum(p.numel() for p in shared))
    for i in range(2):
        torch.testing.assert_close(rows[i], factors[i] * expected[i], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(factors, torch.ones(2))


@pytest.mark.parametrize("name", ["uncertainty", "imtll"])
@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_learned_weights_get_gradients_and_are_stepped(name, combiner):
    model = TwoHeads()
    weighting = WEIGHTINGS.build(name, GROUPS, where=WHERE)
    parameter = next(weighting.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    surgery = Surgery(model, optimizer, combiner, include=["shared.*"], weighting=weighting)
    optimizer.add_param_group({"params": surgery.parameters()})  # the learned weights
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(2)), torch.randn(16)
    raw = model.losses(x, y)
    values = torch.stack([raw[g].detach() for g in GROUPS])
    surgery.backward(raw)
    optimizer.step()
    # s started at 0: d/ds of 0.5 (e^-s L + s) = 0.5 (1 - L); of e^s L - s: L - 1
    expected = 0.5 * (1 - values) if name == "uncertainty" else values - 1
    torch.testing.assert_close(parameter.detach(), -0.5 * expected, rtol=1e-5, atol=1e-7)
    assert not surgery.selected_names or all(
        n.startswith("shared.") for n in surgery.selected_names)


def test_surgery_logs_raw_losses_and_a_skipped_step_updates_nothing():
    model = TwoHeads()
    weighting = WEIGHTINGS.build("famo", GROUPS, where=WHERE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "sum", weighting=weighting)
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(2)), torch.randn(16)
    calls = []
    raw = model.losses(x, y)
    final = float(raw["final"].detach())
    raw["sd"] = raw["sd"] * math.nan  # the pipeline skips the step
    surgery.backward(raw, recompute=lambda: calls.append(1) or raw)
    optimizer.step()
    logged = surgery.log_values()
    assert calls == [] and int(weighting.updates) == 0 and surgery.skipped_steps == 1
    assert logged["loss/final"] == pytest.approx(final) and "weighting/z/sd" in logged
    raw = model.losses(x, y)
    after = {"final": raw["final"].detach() * 0.5, "sd": raw["sd"].detach()}
    surgery.backward(raw, recompute=lambda: calls.append(1) or after)
    optimizer.step()
    assert calls == [1] and int(weighting.updates) == 1
    assert weighting.describe()["z/sd"] > weighting.describe()["z/final"]


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ("uncertainy", "unknown loss weighting 'uncertainy'"),
    ({"name": "dwa", "temperature": 0}, "temperature=0 is invalid"),
    ({"name": "dwa", "temprature": 2}, "unexpected keyword argument 'temprature'"),
    ({"name": "famo", "lr": -1}, "lr=-1 is invalid"),
    ({"name": "famo", "optimizer": "rmsprop"}, "optimizer='rmsprop' is invalid"),
    ({"name": "stch", "mu": "small"}, "mu='small' is invalid"),
    ({"name": "stch", "warmup_epochs": 0}, "warmup_epochs=0 is invalid"),
    ({"name": "stch", "preference": [1.0]}, "preference=[1.0] is invalid"),
    ({"name": "uncertainty", "half": "yes"}, "half='yes' is invalid"),
    ({"name": "imtll", "init": math.inf}, "init=inf is invalid"),
    ({"temperature": 2}, "expected a loss weighting name"),
])
def test_bad_params_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError, match="key 'weighting'") as caught:
        WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_weighting_needs_two_groups():
    with pytest.raises(ConfigError, match="at least two loss groups"):
        WEIGHTINGS.build("dwa", ["exits"], where=WHERE)


def test_params_may_be_nested_under_params():
    weighting = WEIGHTINGS.build({"name": "stch", "params": {"mu": 0.5}}, GROUPS, where=WHERE)
    assert weighting.mu == 0.5


# ---- recipes ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_every_weighting_trains_a_tiny_romebert_recipe(name, tiny_bert_dir, shared_glue_dir,
                                                      tmp_path):
    """Three epochs of two steps: DWA's weights move in epoch 3, STCH's nadir after epoch 1."""
    from gradsurg.programs.multiexit_glue import run

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", weighting=name)
    results = run(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 6
    final = results["weighting"]
    assert final["name"] == name
    assert all(math.isfinite(final[f"weight/{g}"]) and final[f"weight/{g}"] > 0 for g in GROUPS)
    assert all(math.isfinite(m["accuracy"]) for m in results["exit_metrics"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(line["skipped_steps"] == 0 for line in log)
    for line in log:
        assert {"loss/final", "loss/sd", "weighted_loss/final", "weighting/weight/sd",
                "project/fired"} <= set(line)
        assert all(math.isfinite(v) for v in line.values() if isinstance(v, float))
    if name == "dwa":
        assert [line["weighting/weight/final"] for line in log[:4]] == [1.0] * 4
        assert log[4]["weighting/weight/final"] != 1.0
    if name == "stch":
        assert "weighting/nadir/final" in log[-1] and "weighting/nadir/final" not in log[0]
    if name in ("uncertainty", "imtll"):  # learned: moved away from 0 by the optimizer
        key = "log_var" if name == "uncertainty" else "scale"
        assert final[f"{key}/final"] != 0.0 and final[f"{key}/sd"] != 0.0


@pytest.mark.slow
def test_learned_weighting_is_not_in_the_saved_model(tiny_bert_dir, shared_glue_dir, tmp_path):
    from safetensors.torch import load_file

    from gradsurg.programs.multiexit_glue import run

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert_sd", epochs=1,
                               weighting="uncertainty", save_model=True, checkpoints=True)
    run(config, tmp_path)
    saved = load_file(tmp_path / "model" / "model.safetensors")
    assert not any(key.startswith("loss_weighting") for key in saved)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    state = load_file(checkpoint / "model.safetensors")
    assert "loss_weighting.log_vars" in state  # trained with the model, kept for --resume


@pytest.mark.parametrize(("overrides", "message"), [
    (["weighting=dwa", "mode=deebert"], "mode deebert trains one loss group per stage"),
    (["weighting=famo", "mode=pabee"], "single loss group 'exits'"),
    (["weighting={name: stch, mu: -1}"], "key 'weighting': weighting 'stch': mu=-1 is invalid"),
    (["weighting=gls"], "unknown loss weighting 'gls'"),
])
def test_recipe_weighting_errors_are_one_line_and_exit_2(overrides, message, tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from gradsurg.cli import app

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "romebert_glue.yaml"
    args = ["validate", str(recipe)] + [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_recipe_accepts_a_weighting_with_params():
    from pathlib import Path

    from gradsurg.recipes import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "romebert_glue.yaml"
    _, config = load_recipe(recipe, ["weighting={name: famo, lr: 0.01}"])
    assert config.weighting == {"name": "famo", "lr": 0.01}


@pytest.mark.parametrize("name", METHODS)
def test_every_weighting_trains_the_digits_recipe(name, tmp_path):
    """The plugin's recipe (project combiner on the hidden layers) with each weighting."""
    from gradsurg_digits.program import DigitsConfig, train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", [f"weighting={name}", "epochs=4"])
    assert isinstance(config, DigitsConfig)
    results = train(config, tmp_path)
    accuracies = results["exit_accuracy"]
    assert all(math.isfinite(a) for a in accuracies)
    assert accuracies[-1] > 0.6, accuracies  # chance is 0.1
    final = results["weighting"]
    assert final["name"] == name
    assert all(math.isfinite(final[f"weight/{g}"]) and final[f"weight/{g}"] > 0 for g in GROUPS)
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"loss/final", "weighting/weight/sd"} <= set(lines[0])
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(key.startswith("loss_weighting") for key in saved)


def test_digits_recipe_refuses_a_bad_weighting():
    from gradsurg.recipes import load_recipe

    with pytest.raises(ConfigError, match=r"key 'weighting'.*temperature=-1 is invalid"):
        load_recipe("digits_project", ["weighting={name: dwa, temperature: -1}"])


@pytest.mark.slow
def test_famo_run_killed_twice_resumes_bit_for_bit(tiny_bert_dir, shared_glue_dir, tmp_path):
    """FAMO's logits and Adam moments (buffers of the attached weighting) and the dropout
    stream of its extra forward pass go through the checkpoints: SIGKILL in epoch 1 and in
    epoch 2, resume, and end with the uninterrupted run's weights, results and log."""
    from cli_runs import SIGKILLED, assert_same_run, resumable_recipe, run_killed_at

    # 3 steps an epoch, 6 in all, checkpoints at steps 2, 3 (epoch end), 4 and 6
    recipe = resumable_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert",
                              weighting={"name": "famo", "lr": 0.1}, train_rows=24,
                              eval_rows=8, checkpoint_every=2)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_killed_at("none", 0, "run", str(recipe), "--output", str(reference)) == 0
    # two loss evaluations per step (before and after it): call 5 is step 3's (epoch 1),
    # resumes at 2; then step 5's (epoch 2; calls counted from step 3 on), resumes at 4
    run = ["run", str(recipe), "--output", str(resumed)]
    assert run_killed_at("step", 5, *run) == SIGKILLED
    assert (resumed / "checkpoints" / "step-00000002").is_dir()
    assert run_killed_at("step", 5, *run, "--resume") == SIGKILLED
    assert (resumed / "checkpoints" / "step-00000004").is_dir()
    assert run_killed_at("none", 0, *run, "--resume") == 0
    assert_same_run(resumed, reference)
    results = json.loads((reference / "results.json").read_text())
    assert results["weighting"]["z/final"] != pytest.approx(0.5)  # the logits did move


def test_famo_ignores_a_non_finite_loss_change():
    weighting = WEIGHTINGS.build("famo", GROUPS, where=WHERE)
    weighting.step_end(torch.tensor([1.0, 2.0]), torch.tensor([math.nan, 1.0]))
    assert int(weighting.updates) == 0
    assert torch.equal(weighting.logits, torch.zeros(2, dtype=torch.float64))


def test_global_losses_weigh_each_rank_by_its_share():
    """Two ranks: each rank's mean times its share, summed by the all-reduce."""
    from dataclasses import dataclass

    from gradsurg.distributed import DataParallel
    from gradsurg.weightings.loop import global_losses

    @dataclass(frozen=True)
    class OtherRankHolds(DataParallel):
        """The all-reduce adds the other rank's share-weighted losses [0.25 * (2, 4)]."""

        def all_reduce_(self, tensor):
            return tensor.add_(torch.tensor([0.5, 1.0], dtype=tensor.dtype))

    weighting = WEIGHTINGS.build("dwa", GROUPS, where=WHERE)
    local = {"sd": torch.tensor(8.0), "final": torch.tensor(1.0)}
    values = global_losses(local, weighting, share=0.75, parallel=OtherRankHolds(0, 2))
    torch.testing.assert_close(values, torch.tensor([0.75 + 0.5, 6.0 + 1.0],
                                                    dtype=torch.float64))
