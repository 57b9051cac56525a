"""gradsurg inside other training loops: each equals gradsurg's own loop (to 1e-6)."""

from __future__ import annotations

import json

import pytest
import torch
from integration_models import (
    GroupNet,
    assert_same_weights,
    micro_batches,
    plain_loop,
    rows,
    weighted_loop,
)

from gradsurg import Surgery
from gradsurg.precision import LossScale
from gradsurg.weightings import WEIGHTINGS

LR = 0.05


# ---- Hugging Face Trainer -------------------------------------------------------------------

def make_trainer(model, data, tmp_path, **overrides):
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import SequentialSampler

    from gradsurg.integrations.transformers import SurgeryTrainer

    class InOrder(SurgeryTrainer):  # the plain loop's batch order, to compare step by step
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    surgery = overrides.pop("surgery", {"combiner": "pcgrad"})
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=2,
                gradient_accumulation_steps=2, max_grad_norm=0.5, learning_rate=LR,
                lr_scheduler_type="constant", num_train_epochs=1, use_cpu=True,
                report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True,
                weight_decay=0.0, warmup_steps=0, optim="sgd")
    args.update(overrides)
    return InOrder(model=model, args=transformers.TrainingArguments(**args),
                   train_dataset=data, surgery=surgery)


def test_trainer_equals_the_plain_loop_with_accumulation_clipping_and_logs(tmp_path):
    data = rows(16)
    trainer = make_trainer(GroupNet(), data, tmp_path)
    trainer.train()
    reference = plain_loop(GroupNet(), data, batch_size=2, accumulation=2, lr=LR,
                           max_grad_norm=0.5, optimizer_cls=torch.optim.SGD)
    assert_same_weights(trainer.model, reference)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:  # Trainer's own grad_norm sees the combined gradient, and is clipped
        assert entry["grad_norm"] > 0
        assert {"loss/a", "loss/b", "grad_norm/a", "cosine/a/b", "pcgrad/conflicts",
                "grad_norm/combined"} <= set(entry)
    assert max(entry["grad_norm"] for entry in logs) > 0.5  # so the clipping mattered


def dwa_reference(data, *, epochs=3, **options):
    """GroupNet trained with DWA by hand (its weights move from the third epoch on)."""
    weighting = WEIGHTINGS.build("dwa", ["a", "b"], where="test")
    model = weighted_loop(GroupNet(), data, weighting, epochs=epochs, batch_size=2,
                          accumulation=2, lr=LR, **options)
    return model, weighting


def test_trainer_with_a_weighting_equals_the_hand_written_loop(tmp_path):
    data = rows(16)
    trainer = make_trainer(GroupNet(), data, tmp_path, num_train_epochs=3,
                           surgery={"combiner": "pcgrad", "weighting": "dwa"})
    trainer.train()
    reference, weighting = dwa_reference(data, max_grad_norm=0.5,
                                         optimizer_cls=torch.optim.SGD)
    assert_same_weights(trainer.model, reference)
    assert torch.equal(trainer.surgery.weighting.weights(), weighting.weights())
    assert not torch.equal(weighting.weights(), torch.ones(2, dtype=torch.float64))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"loss/a", "weighted_loss/a", "weighting/weight/b"} <= set(logs[-1])


def test_trainer_gives_a_learned_weighting_to_its_optimizer(tmp_path):
    weighting = WEIGHTINGS.build("uncertainty", ["a", "b"], where="test")
    start = next(weighting.parameters()).detach().clone()
    trainer = make_trainer(GroupNet(), rows(8), tmp_path,
                           surgery={"combiner": "sum", "weighting": weighting})
    trainer.train()
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert any(p is next(weighting.parameters()) for p in held)
    assert not torch.equal(next(weighting.parameters()).detach(), start)  # it learned


@pytest.mark.slow
def test_trainer_checkpoint_resume_restores_the_surgery(tmp_path):
    data = rows(16)
    whole = make_trainer(GroupNet(), data, tmp_path / "whole")
    whole.train()
    first = make_trainer(GroupNet(), data, tmp_path / "split", save_strategy="steps",
                         save_steps=2, max_steps=2)
    first.train()
    checkpoint = tmp_path / "split" / "checkpoint-2"
    assert (checkpoint / "gradsurg_surgery.pt").is_file()
    state = torch.load(checkpoint / "gradsurg_surgery.pt", weights_only=True)
    assert state["steps"] == 2
    second = make_trainer(GroupNet(seed=9), data, tmp_path / "split", max_steps=4)
    second.train(resume_from_checkpoint=str(checkpoint))
    assert second.surgery.steps == 4
    assert torch.equal(second.surgery.combiner.generator.get_state(),
                       whole.surgery.combiner.generator.get_state())
    assert_same_weights(second.model, whole.model)


def test_trainer_bf16_trains_like_the_plain_bf16_loop(tmp_path):
    data = rows(8)
    trainer = make_trainer(GroupNet(), data, tmp_path, bf16=True, gradient_accumulation_steps=1,
                           max_grad_norm=0.0)
    trainer.train()
    reference = GroupNet()
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    surgery = Surgery(reference, optimizer, "pcgrad")
    for batch in micro_batches(data, 2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = reference(**batch)
        surgery.backward(losses)
        optimizer.step()
        optimizer.zero_grad()
    assert_same_weights(trainer.model, reference, atol=1e-5)


def test_trainer_with_only_compute_loss_overridden(tmp_path):
    """A model that returns logits; the user's compute_loss turns them into groups."""
    from gradsurg.integrations.transformers import SurgeryTrainer

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = GroupNet().net

        def forward(self, x, y):
            return self.net(x)

    class Mine(SurgeryTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            a, b, extra = model(**inputs)
            ce = torch.nn.functional.cross_entropy
            y = inputs["y"]
            return {"a": ce(a, y), "b": ce(b, (y + 1) % 3) + extra.pow(2).mean()}

    import transformers

    data = rows(16)
    trainer = Mine(model=Logits(), train_dataset=data, surgery={"combiner": "pcgrad"},
                   args=transformers.TrainingArguments(
                       output_dir=str(tmp_path), per_device_train_batch_size=2,
                       gradient_accumulation_steps=2, max_grad_norm=0.5, learning_rate=LR,
                       lr_scheduler_type="constant", num_train_epochs=1, use_cpu=True,
                       report_to="none", save_strategy="no", disable_tqdm=True, optim="sgd"))
    trainer.train()
    reference = plain_loop(GroupNet(), data, batch_size=2, accumulation=2, lr=LR,
                           max_grad_norm=0.5, optimizer_cls=torch.optim.SGD)
    assert_same_weights(trainer.model.net, reference.net)


def test_trainer_refuses_a_model_that_returns_one_loss(tmp_path):
    from gradsurg.errors import GradsurgError

    class OneLoss(GroupNet):
        def forward(self, x, y):
            return {"loss": sum(super().forward(x, y).values())}["loss"]

    trainer = make_trainer(OneLoss(), rows(4), tmp_path)
    with pytest.raises(GradsurgError, match="mapping of loss group names to scalar losses"):
        trainer.train()


# ---- Lightning ------------------------------------------------------------------------------

def lightning_module(combiner="pcgrad", weighting=None):
    pytest.importorskip("lightning")
    from gradsurg.integrations.lightning import SurgeryModule

    class Net(SurgeryModule):
        def __init__(self):
            super().__init__()
            self.model = GroupNet()

        def configure_surgery(self):
            return {"combiner": combiner, "weighting": weighting}

        def training_step(self, batch, batch_idx):
            return self.loss_groups(self.model(**batch))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR)

    return Net()


def lightning_trainer(**overrides):
    import lightning

    options = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accumulate_grad_batches=2,
                   gradient_clip_val=0.5)
    options.update(overrides)
    return lightning.Trainer(**options)


@pytest.mark.parametrize("size", [16, 12])  # 12 rows: the last window holds one micro-batch
def test_lightning_automatic_optimization_equals_the_plain_loop(size):
    from torch.utils.data import DataLoader

    data = rows(size)
    module = lightning_module()
    lightning_trainer().fit(module, DataLoader(data, batch_size=2))
    reference = GroupNet()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=LR)
    surgery = Surgery(reference, optimizer, "pcgrad", max_grad_norm=0.5)
    batches = list(micro_batches(data, 2))
    for start in range(0, len(batches), 2):
        window = batches[start:start + 2]
        for index, batch in enumerate(window):
            losses = reference(**batch)
            surgery.backward({k: v / 2 for k, v in losses.items()},
                             last_micro_batch=index == len(window) - 1)
        optimizer.step()
        optimizer.zero_grad()
    assert_same_weights(module.model, reference)
    assert module.surgery.steps == -(-len(batches) // 2)


def test_lightning_with_a_weighting_equals_the_hand_written_loop():
    from torch.utils.data import DataLoader

    data = rows(16)
    module = lightning_module(weighting="dwa")
    lightning_trainer(max_epochs=3).fit(module, DataLoader(data, batch_size=2))
    reference, weighting = dwa_reference(data, max_grad_norm=0.5)
    assert_same_weights(module.model, reference)
    assert torch.equal(module.surgery.weighting.weights(), weighting.weights())
    assert not torch.equal(weighting.weights(), torch.ones(2, dtype=torch.float64))


def test_lightning_checkpoints_carry_the_surgery_state(tmp_path):
    from torch.utils.data import DataLoader

    loader = DataLoader(rows(8), batch_size=2)
    module = lightning_module()
    trainer = lightning_trainer(enable_checkpointing=True, default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=False)["gradsurg"]
    assert saved["steps"] == 2
    generator = module.surgery.combiner.generator.get_state()
    assert torch.equal(saved["combiner"]["generator"], generator)
    resumed = lightning_module()
    lightning_trainer(max_epochs=2, default_root_dir=str(tmp_path)).fit(
        resumed, loader, ckpt_path=str(checkpoint))
    assert resumed.surgery.steps == 4  # continued from the checkpoint's 2 steps


# ---- Accelerate -----------------------------------------------------------------------------

def prepared_by_accelerate(data):
    """A GroupNet, AdamW and micro-batches of 2 rows prepared by an Accelerator that
    accumulates 2 of them; the Accelerator first."""
    accelerate = pytest.importorskip("accelerate")
    from torch.utils.data import DataLoader

    accelerator = accelerate.Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = GroupNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    return (accelerator, *accelerator.prepare(model, optimizer, DataLoader(data, batch_size=2)))


def test_accelerate_backward_and_clipping_equal_the_plain_loop():
    data = rows(16)
    accelerator, model, optimizer, loader = prepared_by_accelerate(data)
    from gradsurg.integrations.accelerate import backward

    surgery = Surgery(model, optimizer, "pcgrad")
    for batch in loader:
        with accelerator.accumulate(model):
            backward(accelerator, surgery, model(**batch))
            if accelerator.sync_gradients:  # Accelerate's pattern: clip the full gradient
                accelerator.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            optimizer.zero_grad()
    reference = plain_loop(GroupNet(), data, batch_size=2, accumulation=2, lr=LR,
                           max_grad_norm=0.5)
    assert_same_weights(accelerator.unwrap_model(model), reference)


def test_accelerate_with_a_weighting_equals_the_hand_written_loop():
    data = rows(16)
    accelerator, model, optimizer, loader = prepared_by_accelerate(data)
    from gradsurg.integrations.accelerate import backward

    surgery = Surgery(model, optimizer, "pcgrad", weighting="dwa")
    for _ in range(3):
        for batch in loader:
            with accelerator.accumulate(model):
                backward(accelerator, surgery, model(**batch))
                optimizer.step()
                optimizer.zero_grad()
        surgery.epoch_end()
    reference, weighting = dwa_reference(data)
    assert_same_weights(accelerator.unwrap_model(model), reference)
    assert torch.equal(surgery.weighting.weights(), weighting.weights())
    assert not torch.equal(weighting.weights(), torch.ones(2, dtype=torch.float64))


# ---- torch.amp.GradScaler and closure optimizers ---------------------------------------------

def test_standard_grad_scaler_recipe_equals_gradsurgs_own_loss_scaling():
    """Combiners are positively homogeneous: combining scaled rows, then unscaling, is exact."""
    data = rows(16)
    batches = list(micro_batches(data, 4))
    model = GroupNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    surgery = Surgery(model, optimizer, "pcgrad", nonfinite="scaler")
    for batch in batches:
        losses = model(**batch)
        surgery.backward({k: scaler.scale(v) for k, v in losses.items()})
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    reference = GroupNet()
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=LR)
    own = Surgery(reference, ref_optimizer, "pcgrad", max_grad_norm=0.5,
                  loss_scale=LossScale(torch.amp.GradScaler("cpu", init_scale=2.0**12)))
    for batch in batches:
        own.backward(reference(**batch))
        ref_optimizer.step()
        ref_optimizer.zero_grad()
    assert_same_weights(model, reference)


def test_grad_scaler_skips_an_overflowing_step_and_backs_off():
    model = GroupNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    surgery = Surgery(model, optimizer, "upgrad", nonfinite="scaler")
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(micro_batches(rows(4), 4))
    losses = model(**batch)
    losses["a"] = losses["a"] * float("inf")
    surgery.backward({k: scaler.scale(v) for k, v in losses.items()})
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    assert surgery.skipped_steps == 1
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)


def test_lbfgs_with_a_closure_trains_the_shared_parameters():
    model = GroupNet()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    surgery = Surgery(model, optimizer, "pcgrad")
    batch = next(micro_batches(rows(16), 16))
    trunk = [p.detach().clone() for p in model.net.trunk.parameters()]

    def closure():
        optimizer.zero_grad()
        losses = model(**batch)
        surgery.backward(losses)
        return sum(losses.values())

    start = float(closure())
    for _ in range(3):
        optimizer.step(closure)
    assert float(closure()) < start
    assert all(not torch.equal(p.detach(), q)
               for p, q in zip(model.net.trunk.parameters(), trunk))
    assert surgery.selected_names[0].startswith("net.trunk.")


# ---- the step contract's guards ----------------------------------------------------------------

def test_user_clipping_between_backward_and_step_acts_on_the_combined_gradient():
    model = GroupNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    surgery = Surgery(model, optimizer, "pcgrad")
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    surgery.backward(model(**next(micro_batches(rows(8), 8))))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((before - after).norm()) == pytest.approx(1e-3, rel=1e-4)


def test_a_step_before_the_last_micro_batch_is_refused():
    from gradsurg.errors import GradsurgError

    model = GroupNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad", accumulation_steps=2)
    surgery.backward(model(**next(micro_batches(rows(4), 4))))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(GradsurgError, match=r"after 1 of 2 micro-batch.*surgery\.combine\(\)"):
        optimizer.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))
    surgery.combine()  # the fix it names: .grad is then final and the step goes through
    optimizer.step()
    assert not all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))


def test_diagnostics_stay_readable_after_the_step():
    model = GroupNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad", max_grad_norm=1.0)
    surgery.backward(model(**next(micro_batches(rows(4), 4))))
    optimizer.step()
    optimizer.zero_grad()
    assert {"grad_norm/a", "grad_norm/b", "cosine/a/b", "grad_norm/combined",
            "grad_norm/total", "pcgrad/conflicts"} <= set(surgery.diagnostics)
    assert set(surgery.losses) == {"a", "b"}
    json.dumps(surgery.diagnostics)


def test_default_selection_does_not_depend_on_how_outputs_are_packed():
    batch = next(micro_batches(rows(8), 8))
    selections = []
    for stacked in (False, True):
        model = GroupNet(stacked=stacked)
        surgery = Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad")
        surgery.backward(model(**batch))
        selections.append(surgery.selected_names)
    assert selections[0] == selections[1]
    assert all(name.startswith("net.trunk.") for name in selections[0])


@pytest.mark.parametrize(("options", "message"), [
    ({"include": []}, "selects? no trainable parameter"),
    ({"include": ["net.trunk.*"], "exclude": ["*"]}, "selects? no trainable parameter"),
    ({"exclude": ["*"]}, "selects? no trainable parameter"),
    ({"exclude": ["net.trunk.*"]}, "no trainable parameter gets a gradient from more than one"),
])
def test_selecting_nothing_is_an_error(options, message):
    from gradsurg.errors import GradsurgError

    model = GroupNet()
    surgery = Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad", **options)
    with pytest.raises(GradsurgError, match=message):
        surgery.backward(model(**next(micro_batches(rows(4), 4))))


def test_duplicate_names_and_groups_that_reach_nothing_are_errors():
    from gradsurg.errors import GradsurgError

    model = GroupNet()
    surgery = Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad")
    losses = model(**next(micro_batches(rows(4), 4)))
    with pytest.raises(GradsurgError, match=r"loss group name\(s\) \['a'\] given more than once"):
        surgery.backward([("a", losses["a"]), ("a", losses["b"])])
    with pytest.raises(GradsurgError, match="loss group 'c' reaches no trainable parameter"):
        surgery.backward({**losses, "c": torch.tensor(1.0)})


def test_several_processes_without_a_process_group_are_refused(monkeypatch):
    from gradsurg.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    model = GroupNet()
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but no process group"):
        Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), "pcgrad")


def test_combiners_are_callable_on_a_plain_matrix():
    from gradsurg.combiners import COMBINERS, Combined
    from gradsurg.errors import ConfigError

    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    out = COMBINERS.build("upgrad", where="combiner")(matrix)
    assert isinstance(out, Combined) and out.gradient.shape == (2,)
    assert bool((matrix @ out.gradient >= -1e-6).all())  # conflicts with neither row
    pcgrad = {"name": "pcgrad", "seed": 3}
    first = COMBINERS.build(pcgrad, where="combiner")(torch.randn(4, 5, generator=
                                                      torch.Generator().manual_seed(0)))
    again = COMBINERS.build(pcgrad, where="combiner")(torch.randn(4, 5, generator=
                                                      torch.Generator().manual_seed(0)))
    assert torch.equal(first.gradient, again.gradient)  # seeded per instance
    with pytest.raises(ConfigError, match="pass the rows' names"):
        project = {"name": "project", "target": "a", "reference": "b"}
        COMBINERS.build(project, where="combiner")(matrix)
