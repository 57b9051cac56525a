"""The optimizer hook: what the optimizer steps with, and the guard rails around it."""

from __future__ import annotations

import pytest
import torch
from models import TwoHeads, batch, group_losses

from gradsurg import ConfigError, GradsurgError
from gradsurg.combiners import PCGrad, Project, Sum
from gradsurg.surgery import Surgery


def manual_group_grads(model, x, y):
    grads = {}
    for group in ("a", "b"):
        model.zero_grad(set_to_none=True)
        group_losses(model, x, y)[group].backward()
        grads[group] = {
            n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()
            if p.requires_grad
        }
    model.zero_grad(set_to_none=True)
    return grads


def test_step_applies_the_projected_gradient_to_selected_and_the_sum_elsewhere():
    model = TwoHeads()
    x, y = batch()
    grads = manual_group_grads(model, x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, Project(target="a", reference="b"), include=["trunk.*"])
    surgery.backward(group_losses(model, x, y))
    optimizer.step()

    names = surgery.selected_names
    assert names == [n for n, _ in model.named_parameters() if n.startswith("trunk.")]
    g_a = torch.cat([grads["a"][n].flatten() for n in names]).double()
    g_b = torch.cat([grads["b"][n].flatten() for n in names]).double()
    dot = g_a @ g_b
    if dot < 0:
        g_a = g_a - dot / (g_b @ g_b) * g_b
    expected_selected = (g_a + g_b).float()
    moved = torch.cat([(before[n] - p.detach()).flatten() / 0.1
                       for n, p in model.named_parameters() if n in names])
    torch.testing.assert_close(moved, expected_selected, rtol=1e-4, atol=1e-6)
    for n, p in model.named_parameters():
        if n in names:
            continue
        expected = grads["a"][n] + grads["b"][n] if p.requires_grad else torch.zeros_like(p)
        torch.testing.assert_close((before[n] - p.detach()) / 0.1, expected, rtol=1e-4, atol=1e-6)
    assert surgery.diagnostics["project/fired"] == float(dot < 0)
    assert surgery.diagnostics["cosine/a/b"] == pytest.approx(
        float(dot / (g_b.norm() * torch.cat([grads['a'][n].flatten() for n in names]).double()
                     .norm())), rel=1e-4)


def test_default_selection_is_what_more_than_one_group_reaches():
    model = TwoHeads()
    x, y = batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad")
    surgery.backward(group_losses(model, x, y))
    assert surgery.selected_names == [n for n, p in model.named_parameters()
                                      if n.startswith("trunk.")]
    surgery = Surgery(model, optimizer, "pcgrad", exclude=["*.3.*"])  # the LayerNorm
    model.zero_grad(set_to_none=True)
    surgery.backward(group_losses(model, x, y))
    assert "trunk.3.weight" not in surgery.selected_names
    assert "trunk.0.weight" in surgery.selected_names


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_fixed_weight_combiners_skip_the_matrix_and_match_it(combiner):
    """Without diagnostics due, no step builds the matrix; every path gives the same weights."""
    batches = [batch(seed=1), batch(seed=2)]
    results = []
    for diagnostics_every in (None, 1):
        model = TwoHeads()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        surgery = Surgery(model, optimizer, combiner, diagnostics_every=diagnostics_every)
        for x, y in batches:
            surgery.backward(group_losses(model, x, y))
            built = "grad_norm/a" in surgery.diagnostics
            assert built == (diagnostics_every == 1)
            optimizer.step()
            optimizer.zero_grad()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    reference = TwoHeads()
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in batches:
        losses = group_losses(reference, x, y)
        (losses["a"] + losses["b"]).backward()
        if combiner == "mean":  # the mean on the shared trunk, the plain sum everywhere else
            for p in reference.trunk.parameters():
                p.grad /= 2
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    expected = torch.cat([p.detach().flatten() for p in reference.parameters()])
    torch.testing.assert_close(results[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[1], expected, rtol=1e-5, atol=1e-6)


def test_accumulating_micro_batches_combines_once_on_the_sum():
    x, y = batch(10)
    whole_model, split_model = TwoHeads(), TwoHeads()
    for model, parts in ((whole_model, [slice(0, 10)]), (split_model, [slice(0, 3), slice(3, 10)])):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        surgery = Surgery(model, optimizer, PCGrad(seed=1), accumulation_steps=len(parts))
        for part in parts:
            surgery.backward(group_losses(model, x[part], y[part]))
        optimizer.step()
        assert surgery.steps == 1
    for p, q in zip(whole_model.parameters(), split_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_training_loop_with_scheduler_zero_grad_and_clipping():
    model = TwoHeads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=5)
    surgery = Surgery(
        model, optimizer, {"name": "project", "target": "a", "reference": "b"}, max_grad_norm=0.5
    )
    first = None
    for step in range(5):
        x, y = batch(seed=step)
        losses = group_losses(model, x, y)
        first = first if first is not None else sum(v.item() for v in losses.values())
        surgery.backward(losses)
        optimizer.step()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])) <= 0.5 + 1e-5
        assert surgery.diagnostics["grad_norm/total"] > 0
        scheduler.step()
        optimizer.zero_grad(set_to_none=step % 2 == 0)  # both zero_grad styles
    assert surgery.steps == 5
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3)
    x, y = batch(seed=0)
    assert sum(v.item() for v in group_losses(model, x, y).values()) < first


def test_bf16_autocast_gives_finite_rows_close_to_float32():
    x, y = batch(16)
    rows = []
    for autocast in (False, True):
        model = TwoHeads()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        surgery = Surgery(model, optimizer, Recording(), include=["trunk.*"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = group_losses(model, x, y)
        surgery.backward(losses)
        rows.append(surgery.combiner.seen)
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert rows[1].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(rows[0], rows[1], dim=1)
    assert (cosine > 0.98).all(), cosine


class Recording(PCGrad):
    """PCGrad that keeps a copy of the matrix it combined."""

    def combine(self, matrix, gram):
        self.seen = matrix.clone()
        return super().combine(matrix, gram)


def test_state_dict_round_trip_restores_the_combiner():
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, PCGrad(seed=5))
    x, y = batch()
    surgery.backward(group_losses(model, x, y))
    optimizer.step()
    state = surgery.state_dict()
    restored = Surgery(TwoHeads(), torch.optim.SGD(TwoHeads().parameters(), lr=0.1), PCGrad(seed=0))
    restored.load_state_dict(state)
    assert restored.steps == 1
    restored_state = restored.combiner.generator.get_state()
    assert torch.equal(restored_state, surgery.combiner.generator.get_state())


def test_foreign_gradient_is_refused_not_overwritten():
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad")
    x, y = batch()
    surgery.backward(group_losses(model, x, y))
    optimizer.step()
    sum(group_losses(model, x, y).values()).backward()  # forgot zero_grad, plain backward
    with pytest.raises(GradsurgError, match=r"trunk\.0\.weight.*zero_grad"):
        surgery.backward(group_losses(model, x, y))


def test_changing_groups_within_a_step_and_bad_options_are_errors():
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, Sum(), diagnostics_every=1, accumulation_steps=2)
    x, y = batch()
    losses = group_losses(model, x, y)
    surgery.backward(losses)
    with pytest.raises(GradsurgError, match="changed within one optimizer step"):
        surgery.backward({"a": group_losses(model, x, y)["a"]})
    with pytest.raises(ConfigError, match=r"include pattern 'encoder\.\*' matches no"):
        Surgery(model, optimizer, "sum", include=["encoder.*"]).backward(losses)
    with pytest.raises(ConfigError, match="mode 'fast'"):
        Surgery(model, optimizer, "sum", mode="fast")
    with pytest.raises(ConfigError, match="max_grad_norm"):
        Surgery(model, optimizer, "sum", max_grad_norm=0)


class CountingProject(Project):
    """Project that counts how often its group names are resolved to rows."""

    resolved = 0

    def resolve(self, names):
        self.resolved += 1
        super().resolve(names)


def test_the_combiner_is_bound_to_its_groups_once_not_every_step():
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    combiner = CountingProject(target="b", reference="a")
    surgery = Surgery(model, optimizer, combiner, include=["trunk.*"])
    x, y = batch()
    for _ in range(3):
        surgery.backward(group_losses(model, x, y))
        optimizer.step()
        optimizer.zero_grad()
    assert combiner.resolved == 1 and combiner.names == ["a", "b"]
    assert combiner.rows == (1, 0)  # target b is row 1, reference a row 0
    surgery.backward(dict(reversed(list(group_losses(model, x, y).items()))))
    assert combiner.resolved == 2 and combiner.rows == (0, 1)  # new order: bound again


def test_a_group_the_combiner_names_but_the_step_lacks_fails_at_binding():
    model = TwoHeads()
    surgery = Surgery(model, None, Project(target="a", reference="sd"))
    x, y = batch()
    with pytest.raises(ConfigError, match=r"reference group 'sd' is not among the loss groups"):
        surgery.backward(group_losses(model, x, y))
