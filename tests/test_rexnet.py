"""ReXNet (issue 5): the rexnet block, the linear width schedule, the zoo count and the rexnet search space."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space.compiler import build_model
from search_space.cost import architecture_cost, model_widths
from search_space.sampling import InfeasibleSample, RandomSuggester, sample
from search_space.schema import SpecError
from search_space.spec import dump_spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "spaces" / "zoo" / "rexnet_100.yaml"
SPACE = ROOT / "spaces" / "rexnet.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: threads only add OpenMP waits (conftest)


def counted_macs(model: torch.nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 2


def with_multiplier(model, m: float):
    return dataclasses.replace(model, widths=dataclasses.replace(model.widths, multiplier=m))


@pytest.fixture(scope="module")
def rexnet_100():
    return load_spec(ZOO)


def test_zoo_rexnet_100_params_and_macs(rexnet_100):
    cost = architecture_cost(rexnet_100.model)
    assert cost.params == 4_796_873
    model = build_model(rexnet_100.model).eval()
    assert sum(p.numel() for p in model.parameters()) == 4_796_873
    with torch.no_grad():
        macs = counted_macs(model, torch.randn(1, 3, 224, 224))
    assert cost.macs == pytest.approx(macs, rel=0.01)
    assert cost.macs / 1e9 == pytest.approx(0.398, rel=0.01)


def test_linear_schedule_rounds_half_to_even(rexnet_100):
    stem, widths, head = model_widths(rexnet_100.model)
    # 38.5 -> 38, 83.5 -> 84, 128.5 -> 128, 173.5 -> 174: Python's round, not floor(x + 0.5)
    assert [w for stage in widths for w in stage] == [16, 27, 38, 50, 61, 72, 84, 95, 106, 117, 128, 140, 151,
                                                      162, 174, 185]
    assert [len(s) for s in widths] == [1, 2, 2, 3, 3, 5]
    assert (stem, head) == (32, 1280)


@pytest.mark.parametrize("multiplier, millions, stem, head", [
    (1.3, 7.56, 42, 1664), (1.5, 9.73, 48, 1920), (2.0, 16.37, 64, 2560), (3.0, 34.71, 96, 3840)])
def test_multiplier_reproduces_published_variants(rexnet_100, multiplier, millions, stem, head):
    """ReXNet-1.3/1.5/2.0/3.0 (timm's table) come from the same file with only the multiplier changed."""
    model = with_multiplier(rexnet_100.model, multiplier)
    assert round(architecture_cost(model).params / 1e6, 2) == millions
    s, _, h = model_widths(model)
    assert (s, h) == (stem, head)


def test_multiplier_below_one_keeps_start_and_stem(rexnet_100):
    stem, widths, head = model_widths(with_multiplier(rexnet_100.model, 0.5))
    flat = [w for stage in widths for w in stage]
    assert flat[0] == 16 and stem == 32 and head == 640
    assert flat[-1] == round(16 + 15 * 180 / 16 * 0.5)


def test_partial_residual_and_channels_last():
    arch = sample(load_spec(SPACE), RandomSuggester(3)).model
    model = build_model(arch, 1, 10).to(memory_format=torch.channels_last)
    # a stride-1 block whose width grows adds the shortcut to its first `in` channels only
    blocks = [b for stage in model.stages for b in stage]
    block = next(b for b in blocks if b.use_shortcut and b.in_channels < b.out_channels)
    x = torch.randn(2, block.in_channels, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    block.eval()
    out = block(x)
    branch = block.conv_pwl(block.act_dw(block.se(block.conv_dw(block.conv_exp(x)))))
    ci = block.in_channels
    torch.testing.assert_close(out[:, :ci], branch[:, :ci] + x)
    torch.testing.assert_close(out[:, ci:], branch[:, ci:])
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # strided blocks have no shortcut; the first block (expansion 1) has no expansion conv
    assert not blocks[1].use_shortcut
    # depthwise weights get timm's init, std sqrt(2 / 9), not PyTorch's fan_out (which ignores groups)
    dw = blocks[-1].conv_dw[0].weight
    assert dw.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.2)
    assert isinstance(blocks[0].conv_exp, torch.nn.Identity)


def test_space_samples_compile_train_and_match_cost():
    space = load_spec(SPACE)
    assert not space.is_fixed()
    seen, done = set(), 0
    for seed in range(60):
        suggest = RandomSuggester(seed)
        try:
            arch = sample(space, suggest)
        except InfeasibleSample:
            continue
        assert "widths.multiplier" in suggest.params
        seen.add(suggest.params["widths.multiplier"])
        model_spec = arch.model
        cost = architecture_cost(model_spec, in_channels=1, num_classes=10)
        model = build_model(model_spec, 1, 10)
        assert sum(p.numel() for p in model.parameters()) == cost.params, seed
        x = torch.randn(2, 1, model_spec.input_size, model_spec.input_size)
        model.train()
        model(x).square().mean().backward()
        assert all(p.grad is not None for p in model.parameters()), seed
        model.eval()
        with torch.no_grad():
            macs = counted_macs(model, x[:1])
        assert cost.macs == pytest.approx(macs, rel=0.01), seed
        assert load_spec(dump_spec(arch)) == arch, seed
        done += 1
    assert done >= 50
    assert len(seen) > 1


def test_dump_load_round_trip(rexnet_100):
    text = dump_spec(rexnet_100)
    assert "widths: {schedule: linear" in text
    assert load_spec(text) == rexnet_100
    space = load_spec(SPACE)
    assert load_spec(dump_spec(space)) == space


def spec_text(widths: str, stage_width: str = "") -> str:
    return f"""
name: t
model:
  input_size: 16
  stem: {{type: rexnet, width: 16}}
  widths: {widths}
  stages:
    - {{depth: 2, stride: 1, {stage_width}block: {{type: rexnet}}}}
"""


@pytest.mark.parametrize("widths, stage_width, path", [
    ("{schedule: exponential}", "", "model.widths.schedule"),
    ("{schedule: linear, multiplier: 0}", "", "model.widths.multiplier"),
    ("{schedule: linear, multiplier: {choice: [1.0, -2]}}", "", "model.widths.multiplier.choice.1"),
    ("{schedule: linear, start: 0}", "", "model.widths.start"),
    ("{schedule: linear, growth: -1}", "", "model.widths.growth"),
    ("{schedule: linear, growth: many}", "", "model.widths.growth"),
    ("{schedule: linear, stat: 16}", "", "model.widths.stat"),
    ("{schedule: {choice: [stage, linear]}}", "", "model.widths.schedule"),
    ("{multiplier: 1.5}", "", "model.widths.multiplier"),
    ("{schedule: linear}", "width: 32, ", "model.stages.0.width"),
])
def test_bad_schedule_names_the_field(widths, stage_width, path):
    with pytest.raises(SpecError) as info:
        load_spec(spec_text(widths, stage_width))
    assert info.value.path == path, str(info.value)


def test_schedule_off_keeps_stage_widths():
    spec = load_spec(spec_text("{schedule: stage}", "width: 24, "))
    _, widths, _ = model_widths(spec.model)
    assert widths == [[24, 24]]
    assert "widths" not in dump_spec(spec)


# ReXNet-R (issue 8): widths, depthwise and SE widths rounded to multiples of a divisor.
ZOO_R = ROOT / "spaces" / "zoo" / "rexnetr_100.yaml"


def with_divisor(model, multiplier: float, divisor: int):
    """The ReXNet-R file at another multiplier and divisor (the first block reads no divisor: no expansion, no SE)."""
    stages = [dataclasses.replace(s, blocks=[dataclasses.replace(b, rexnet_divisor=divisor)
                                             if b.expansion != 1.0 or b.se_rexnet else b for b in s.blocks])
              for s in model.stages]
    widths = dataclasses.replace(model.widths, multiplier=multiplier, divisor=divisor)
    return dataclasses.replace(model, widths=widths, stages=stages)


def test_rexnetr_widths_are_multiples_of_eight():
    arch = load_spec(ZOO_R).model
    stem, widths, head = model_widths(arch)
    flat = [w for stage in widths for w in stage]
    # make_divisible(round(16 + i * 180 / 16), 8), never below 90% of the unrounded width: 27 -> 24 < 24.3 -> 32
    assert flat == [16, 32, 40, 48, 64, 72, 88, 96, 104, 120, 128, 144, 152, 160, 176, 184]
    assert (stem, head) == (32, 1280)
    model = build_model(arch)
    dws = [b.conv_dw[0].out_channels for stage in model.stages for b in stage]
    ses = [b.se.fc1.out_channels for stage in model.stages for b in stage if not isinstance(b.se, torch.nn.Identity)]
    assert all(d % 8 == 0 for d in dws[1:]) and all(r % 8 == 0 for r in ses)
    assert dws[0] == 32  # expansion 1: the depthwise conv keeps the stem's width


@pytest.mark.parametrize("multiplier, divisor, params, stem, head", [
    # timm 1.0.31: rexnetr_130/150/200 use ch_div 8, rexnetr_300 ch_div 16; sum(p.numel()) of timm's models
    (1.3, 8, 7_608_080, 40, 1664), (1.5, 8, 9_782_256, 48, 1920), (2.0, 8, 16_522_432, 64, 2560),
    (3.0, 16, 34_810_008, 96, 3840)])
def test_rexnetr_variants_from_the_same_file(multiplier, divisor, params, stem, head):
    model = with_divisor(load_spec(ZOO_R).model, multiplier, divisor)
    assert architecture_cost(model).params == params
    s, _, h = model_widths(model)
    assert (s, h) == (stem, head)


def test_space_draws_both_divisors():
    space = load_spec(SPACE)
    seen = set()
    for seed in range(40):
        suggest = RandomSuggester(seed)
        try:
            arch = sample(space, suggest).model
        except InfeasibleSample:
            continue
        seen.add(("widths", arch.widths.divisor))
        seen |= {("block", b.rexnet_divisor) for s in arch.stages for b in s.blocks}
        assert arch.stages[0].blocks[0].rexnet_divisor == 1  # expansion 1, no SE: never asked
    assert seen == {("widths", 1), ("widths", 8), ("block", 1), ("block", 8)}
