"""Mixed precision: fp16 loss scaling inside Surgery (unscaled before combining, overflow skips
and backs off, growth after good steps, checkpointable), bf16 autocast in the program."""

from __future__ import annotations

import pytest
import torch
from models import TwoHeads, batch
from state_checks import through_a_weights_only_checkpoint

from gradsurg.errors import ConfigError
from gradsurg.precision import LossScale, autocast_factory
from gradsurg.surgery import Surgery

PROJECT = {"name": "project", "target": "a", "reference": "b"}


def mean_losses(model: TwoHeads, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    a, b, extra = model(x)
    ce = torch.nn.functional.cross_entropy
    return {"a": ce(a, y), "b": ce(b, (y + 1) % 3) + extra.pow(2).mean()}


def train(steps: int, combiner: object, loss_scale: LossScale | None = None
          ) -> tuple[TwoHeads, Surgery, list[torch.Tensor]]:
    model = TwoHeads(seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    surgery = Surgery(model, optimizer, combiner, loss_scale=loss_scale, max_nonfinite_steps=50)
    grads = []
    for step in range(steps):
        x, y = batch(8, seed=step)
        surgery.backward(mean_losses(model, x, y))
        optimizer.step()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]) if surgery.diagnostics.get(
                                    "nonfinite/skipped") is None else torch.empty(0))
        optimizer.zero_grad(set_to_none=True)
    return model, surgery, grads


def scale(init: float, **options: float) -> LossScale:
    return LossScale(torch.amp.GradScaler("cpu", init_scale=init, **options))


@pytest.mark.parametrize("combiner", ["sum", "pcgrad", PROJECT], ids=["sum", "pcgrad", "project"])
def test_scaled_training_equals_unscaled(combiner):
    """A power-of-two scale is divided out exactly before the combiner sees the matrix."""
    plain, _, plain_grads = train(4, combiner)
    scaled, surgery, scaled_grads = train(4, combiner, scale(2.0**12, growth_interval=1000))
    assert surgery.skipped_steps == 0
    for a, b in zip(scaled_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for (name, p), q in zip(scaled.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_overflow_skips_untouched_and_backs_off_until_finite():
    loss_scale = scale(2.0**127, backoff_factor=0.25, growth_interval=1000)

    def big_losses(model, x, y):  # gradients ~1e3: at scale 2**127 they overflow float32
        return {name: 1e3 * loss for name, loss in mean_losses(model, x, y).items()}

    model = TwoHeads(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    surgery = Surgery(model, optimizer, PROJECT, loss_scale=loss_scale, max_nonfinite_steps=50)
    x, y = batch(8, seed=0)
    surgery.backward(big_losses(model, x, y))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert surgery.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert loss_scale.value == 2.0**125
    while surgery.skipped_steps == surgery.steps:  # keeps backing off until a step is finite
        surgery.backward(big_losses(model, x, y))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert 1 < surgery.steps < 20
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_scale_grows_after_the_interval_and_round_trips_through_a_safe_checkpoint():
    loss_scale = scale(2.0**8, growth_interval=3, growth_factor=2.0)
    _, surgery, _ = train(7, "sum", loss_scale)
    assert loss_scale.value == 2.0**10 and loss_scale.good_steps == 1
    saved = through_a_weights_only_checkpoint(surgery.state_dict())
    restored = scale(1.0)
    fresh = Surgery(TwoHeads(), torch.optim.SGD(TwoHeads().parameters(), lr=0.1), "sum",
                    loss_scale=restored)
    fresh.load_state_dict(saved)
    assert restored.value == 2.0**10 and restored.good_steps == 1


def test_loss_scaling_refuses_a_nonfinite_rule_that_would_apply_overflow():
    model = TwoHeads()
    with pytest.raises(ConfigError, match="loss scaling needs nonfinite='skip'"):
        Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), "sum",
                loss_scale=scale(2.0), nonfinite="ignore")


def test_autocast_factory():
    with autocast_factory("bf16", torch.device("cpu"))():
        assert torch.nn.Linear(3, 3)(torch.randn(2, 3)).dtype == torch.bfloat16
    with autocast_factory("fp32", torch.device("cpu"))():
        assert torch.nn.Linear(3, 3)(torch.randn(2, 3)).dtype == torch.float32
    with pytest.raises(ConfigError, match="precision 'fp16' needs a CUDA device"):
        autocast_factory("fp16", torch.device("cpu"))


@pytest.mark.slow
def test_bf16_recipe_trains_on_the_cpu(tiny_bert_dir, shared_glue_dir, tmp_path, monkeypatch):
    from gradsurg.programs.multiexit_glue import recipe
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    seen: set[torch.dtype] = set()
    original = recipe.forward

    def spy(model, batch):
        logits = original(model, batch)
        seen.update(x.dtype for x in logits)
        return logits

    monkeypatch.setattr(recipe, "forward", spy)
    config = MultiExitGlueConfig(
        program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(shared_glue_dir),
        train_rows=16, eval_rows=16, batch_size=8, epochs=1, max_length=32, optimizer={"lr": 1e-3},
        precision="bf16", threads=2, checkpoints=False, save_model=False)
    results = recipe.run(config, tmp_path)
    assert torch.bfloat16 in seen  # the training forward ran under autocast
    assert torch.isfinite(torch.tensor(results["train"]["joint"]["loss/final"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs CUDA")
def test_fp16_recipe_trains_on_a_gpu(tiny_bert_dir, shared_glue_dir, tmp_path):
    from gradsurg.programs.multiexit_glue import run
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    config = MultiExitGlueConfig(
        program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(shared_glue_dir),
        train_rows=16, eval_rows=16, batch_size=8, epochs=1, max_length=32, optimizer={"lr": 1e-3},
        precision="fp16", device="cuda", checkpoints=False, save_model=False)
    results = run(config, tmp_path)
    assert torch.isfinite(torch.tensor(results["train"]["joint"]["loss/final"]))
