"""The default parameter selection finds every parameter more than one loss group can
move: zero-initialised adapters (peft LoRA's `lora_A` while `lora_B` is 0, hand-made ones)
included, stacked outputs still not fooling it, and a case it cannot decide refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsurg import Surgery
from gradsurg.errors import ConfigError

ce = nn.functional.cross_entropy


class Exits(nn.Module):
    """A shared layer, a layer only the final exit reads, two exits; `stacked` packs them."""

    def __init__(self, stacked: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.early, self.final = nn.Linear(16, 3), nn.Linear(16, 3)
        self.stacked = stacked

    def forward(self, x):
        h = self.trunk[:2](x)
        outs = [self.early(h), self.final(self.trunk[2:](h))]
        return torch.stack(outs) if self.stacked else outs


def data(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 3, (16,),
                                                                 generator=generator)


def losses(out, y):
    return {"early": ce(out[0], y), "final": ce(out[1], (y + 1) % 3)}


def select(model, combiner="upgrad", **options) -> list[str]:
    surgery = Surgery(model, torch.optim.SGD(model.parameters(), lr=0.1), combiner, **options)
    x, y = data()
    surgery.backward(losses(model(x), y))
    return surgery.selected_names


def train(model, steps=3, **options) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    surgery = Surgery(model, optimizer, "mgda", **options)  # never the plain sum
    for step in range(steps):
        x, y = data(seed=step)
        surgery.backward(losses(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def lora(stacked: bool):
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(Exits(stacked), peft.LoraConfig(
        r=4, target_modules=["trunk.0", "trunk.2"], modules_to_save=["early", "final"]))


@pytest.mark.parametrize("stacked", [False, True])
def test_peft_lora_adapters_of_shared_layers_are_selected_with_zero_lora_b(stacked):
    model = lora(stacked)
    assert not model.base_model.model.trunk[0].lora_B["default"].weight.any()  # peft's init
    selected = select(model)
    # trunk.0 feeds both exits: its lora_A (zero gradient while lora_B is 0) and lora_B;
    # trunk.2 feeds the final exit only; the heads are each their own exit's.
    assert selected == ["base_model.model.trunk.0.lora_A.default.weight",
                        "base_model.model.trunk.0.lora_B.default.weight"]


@pytest.mark.parametrize("stacked", [False, True])
def test_the_default_trains_peft_lora_as_the_explicit_selection_does(stacked):
    default = train(lora(stacked))
    explicit = train(lora(stacked), include=["*trunk.0.lora_*"])
    assert default.keys() == explicit.keys()
    for name in default:
        assert torch.equal(default[name], explicit[name]), name
    # and not as the plain sum would have it on lora_A (the old default's result)
    old = train(lora(stacked), include=["*trunk.0.lora_B*"])
    name = "base_model.model.trunk.0.lora_A.default.weight"
    assert not torch.equal(default[name], old[name])


class ZeroAdapter(nn.Module):
    """A hand-made adapter: x + up(down(x)) with `up` zero-initialised (LoRA's shape), or a
    ReZero branch x + alpha * f(x) with alpha = 0."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.down, self.up = nn.Linear(16, 4, bias=False), nn.Linear(4, 16, bias=False)
        self.alpha = nn.Parameter(torch.zeros(()))
        nn.init.zeros_(self.up.weight)

    def forward(self, h):
        if self.kind == "lora":
            return h + self.up(self.down(h))
        return h + self.alpha * torch.tanh(self.down(h).repeat(1, 4))


class AdapterExits(nn.Module):
    def __init__(self, kind: str, stacked: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(8, 16), nn.Tanh())
        self.adapter = ZeroAdapter(kind)
        self.early, self.final = nn.Linear(16, 3), nn.Linear(16, 3)
        self.stacked = stacked

    def forward(self, x):
        h = self.adapter(self.trunk(x))
        outs = [self.early(h), self.final(h)]
        return torch.stack(outs) if self.stacked else outs


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("kind", ["lora", "rezero"])
def test_a_hand_made_zero_initialised_adapter_is_selected(kind, stacked):
    selected = select(AdapterExits(kind, stacked))
    adapter = (["adapter.down.weight", "adapter.up.weight"] if kind == "lora"
               else ["adapter.alpha", "adapter.down.weight"])  # model order; up is unused
    assert selected == ["trunk.0.weight", "trunk.0.bias", *adapter]


def test_stacked_outputs_keep_each_head_with_its_own_group():
    assert select(Exits(stacked=True)) == select(Exits(stacked=False)) == [
        "trunk.0.weight", "trunk.0.bias"]


class Attention(nn.Module):
    """Self-attention through torch's fused kernel (no second derivative on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, h):
        q, k, v = self.qkv(h).view(h.shape[0], 1, 4, 12).chunk(3, dim=-1)  # 4-D: fused
        return h + nn.functional.scaled_dot_product_attention(q, k, v).reshape(h.shape[0], 16)


class ZeroGate(nn.Module):
    """Group `final` reads the trunk directly; group `early` through a zero-initialised
    projection, so its gradient on the trunk is zero now but not for long. With
    `fused_attention` the trunk runs torch's fused attention, which has no second derivative
    on the CPU."""

    def __init__(self, fused_attention: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(8, 16)
        self.attention = Attention() if fused_attention else None
        self.project = nn.Linear(16, 16)
        nn.init.zeros_(self.project.weight)
        self.early, self.final = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        if self.attention is not None:
            h = self.attention(h)
        return [self.early(self.project(h)), self.final(h)]


def test_a_group_whose_path_a_zero_weight_gates_is_found_by_the_second_derivative():
    assert select(ZeroGate()) == ["trunk.weight", "trunk.bias"]
    before = torch.get_rng_state()
    select(ZeroGate())
    assert torch.equal(torch.get_rng_state(), before)  # the probe draws from its own generator


def test_a_case_the_default_cannot_decide_is_refused_with_include():
    with pytest.raises(ConfigError, match=r"cannot tell whether loss group 'early' moves "
                       r"'trunk.weight', 'trunk.bias', 'attention.qkv.weight', "
                       r"'attention.qkv.bias'.*include=\[\.\.\.\]"):
        select(ZeroGate(fused_attention=True))
    assert select(ZeroGate(fused_attention=True), include=["trunk.*"]) == [
        "trunk.weight", "trunk.bias"]


class AttentionAdapterExits(AdapterExits):
    def __init__(self, stacked: bool) -> None:
        super().__init__("lora", stacked)
        self.attention = Attention()

    def forward(self, x):
        h = self.attention(self.adapter(self.trunk(x)))
        outs = [self.early(h), self.final(h)]
        return torch.stack(outs) if self.stacked else outs


@pytest.mark.parametrize("stacked", [False, True])
def test_a_zero_initialised_adapter_is_selected_without_a_second_derivative(stacked):
    selected = select(AttentionAdapterExits(stacked))
    assert {"adapter.down.weight", "adapter.up.weight", "attention.qkv.weight"} <= set(selected)
    assert not any(name.startswith(("early.", "final.")) for name in selected)
