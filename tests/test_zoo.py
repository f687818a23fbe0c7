"""The paper zoo: exact parameter counts (DESIGN.md section 4, and timm's counts for the variants of issue 8) from
the cost model and the built module, and MACs within 1% of torch's flop counter and of the reference GMACs. One
forward per model, at 224x224, batch 1.

The counted forward runs on the ``meta`` device: the flop counter counts from shapes alone, so the count is the
one a CPU forward gives (``test_meta_count_equals_cpu_count`` holds that on ResNet-18, and ``search compile``
runs ResNeSt-50d for real) at a fraction of the time, which keeps this file to a few seconds.

Small-image models (``*_small``) are covered by the training tests. That the zoo models are the same functions as
timm's (weights copied in, identical logits) is checked by ``benchmarks/timm_equivalence.py``, which needs timm.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import ZOO, counted_macs, n_params
from search_space.compiler import build_model
from search_space.cost import architecture_cost, model_widths
from search_space.spec import load_spec

pytestmark = pytest.mark.usefixtures("single_thread")

# DESIGN.md section 4: exact parameters and GMACs (3x224x224, 1000 classes).
REFERENCE = {
    "resnet18": (11_689_512, 1.814),
    "resnet50": (25_557_032, 4.089),
    "resnext50_32x4d": (25_028_904, 4.230),
    "seresnet50": (28_088_024, 4.092),
    "skresnext50_32x4d": (27_479_784, 4.463),
    "resnest50d": (27_483_240, 5.371),
    "res2net50_26w_4s": (25_699_120, 4.255),
    "rexnet_100": (4_796_873, 0.398),
    # timm 1.0.31's models of the same names (sum of p.numel(); MACs as torch's flop counter counts timm's model).
    "skresnet18": (11_958_056, 1.814),          # SK with split input, attention C/8 rounded to 16
    "skresnet34": (22_282_376, 3.664),
    "resnest50d_4s2x40d": (30_417_592, 4.369),  # R=4, K=2, 40 channels per group, avd_first
    "resnet26t": (16_011_872, 2.550),           # tiered deep stem 24-32-64
    "rexnetr_100": (4_883_304, 0.419),          # ReXNet-1.0 with widths rounded to multiples of 8
}

FILES = [p for p in ZOO if not p.stem.endswith("_small")]


def test_zoo_is_complete():
    assert sorted(p.stem for p in FILES) == sorted(REFERENCE)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_zoo_reference_figures(path):
    spec = load_spec(path)
    assert spec.is_fixed() and spec.name == path.stem
    arch = spec.model
    assert (arch.in_channels, arch.num_classes, arch.input_size) == (3, 1000, 224)
    params, gmacs = REFERENCE[path.stem]

    cost = architecture_cost(arch)
    assert cost.params == params
    assert cost.macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert cost.macs / 1e9 == pytest.approx(gmacs, abs=0.0005)  # the table's three decimals
    assert sum(r.params for r in cost.rows) == cost.params
    assert sum(r.macs for r in cost.rows) == cost.macs
    assert cost.rows[-2].out_shape[1:] == (7, 7)

    with torch.device("meta"):
        model = build_model(arch)
    assert n_params(model) == params
    assert model.num_features == (model_widths(arch)[2] or cost.rows[-2].width)
    measured = counted_macs(model, 3, 224, device="meta")
    assert cost.macs == pytest.approx(measured, rel=0.01)


def test_meta_count_equals_cpu_count():
    arch = load_spec(next(p for p in FILES if p.stem == "resnet18")).model
    cpu = build_model(arch)
    with torch.device("meta"):
        meta = build_model(arch)
    assert n_params(cpu) == n_params(meta) == REFERENCE["resnet18"][0]
    assert counted_macs(cpu, 3, 224) == counted_macs(meta, 3, 224, device="meta") == architecture_cost(arch).macs


def test_compile_resnest50d_prints_params(cli):
    path = next(p for p in FILES if p.stem == "resnest50d")
    result = cli("compile", path)
    assert result.code == 0, result
    assert "27,483,240" in result.out
    total = [line for line in result.out.splitlines() if line.startswith("total:")]
    assert total == ["total: 27,483,240 parameters, 5.371 GMACs, output (1, 1000)"]


NEW_KEYS = {"skresnet18": "sk_split", "skresnet34": "sk_split", "resnest50d_4s2x40d": "avd_first",
            "resnet26t": "deep_tiered", "rexnetr_100": "divisor"}


@pytest.mark.parametrize("name", sorted(NEW_KEYS))
def test_new_variants_need_their_key(name):
    """Without the key of issue 8 each variant is a different network: the key is what makes the count exact."""
    arch = load_spec(next(p for p in FILES if p.stem == name)).model
    if name.startswith("sk"):
        off = dataclasses.replace(arch, stages=[dataclasses.replace(s, blocks=[
            dataclasses.replace(b, sk_split=False) for b in s.blocks]) for s in arch.stages])
    elif name.startswith("resnest"):
        off = dataclasses.replace(arch, stages=[dataclasses.replace(s, blocks=[
            dataclasses.replace(b, avd_first=False) for b in s.blocks]) for s in arch.stages])
    elif name == "resnet26t":
        off = dataclasses.replace(arch, stem=dataclasses.replace(arch.stem, type="deep"))
    else:
        off = dataclasses.replace(arch, widths=dataclasses.replace(arch.widths, divisor=1), stages=[
            dataclasses.replace(s, blocks=[dataclasses.replace(b, rexnet_divisor=1) for b in s.blocks])
            for s in arch.stages])
    on, without = architecture_cost(arch), architecture_cost(off)
    assert on.params == REFERENCE[name][0]
    if name.startswith("resnest"):
        # avd_first moves the pool, not a weight: same parameters, more MACs when the conv runs unpooled.
        assert without.params == on.params and without.macs > on.macs
    else:
        assert without.params != on.params


@pytest.mark.parametrize("name", sorted(NEW_KEYS))
def test_compile_prints_timm_params(cli, name):
    result = cli("compile", next(p for p in FILES if p.stem == name))
    assert result.code == 0, result
    total = [line for line in result.out.splitlines() if line.startswith("total:")]
    params, gmacs = REFERENCE[name]
    assert total == [f"total: {params:,} parameters, {gmacs:.3f} GMACs, output (1, 1000)"]
