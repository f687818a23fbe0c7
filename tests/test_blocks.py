"""Blocks: memory format, numerics against loop-based references, widths, initialisation, and the compiled
model under torch.compile / torch.jit.trace with the timm-style interface."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_space.blocks import BlockContext, block_type_names, get_block_type
from search_space.blocks.layers import Counter
from search_space.blocks.res2net import Res2NetConv
from search_space.blocks.residual import MixerBlockType
from search_space.blocks.sk import SelectiveKernel
from search_space.blocks.split_attention import SplitAttention
from search_space.compiler import build_model
from search_space.cost import architecture_cost
from search_space.schema import SpecError
from search_space.spec import BlockSpec, load_spec

pytestmark = pytest.mark.usefixtures("single_thread")

TYPES = block_type_names()


def make_divisible(v, d=8, min_value=None, limit=0.9):
    """DESIGN.md section 3, written out independently of the package."""
    min_value = min_value or d
    n = max(min_value, int(v + d / 2) // d * d)
    if n < limit * v:
        n += d
    return n


def block_spec(name: str, bottleneck: bool = True, **extra) -> BlockSpec:
    """A spec with K = 2 and R = 2 wherever the type reads them."""
    uses = get_block_type(name).uses
    kw = {"type": name}
    if "bottleneck" in uses:
        kw["bottleneck"] = bottleneck
    if "bottleneck_ratio" in uses:
        kw["bottleneck_ratio"] = 0.5
    if "cardinality" in uses:
        kw["cardinality"] = 2
    if "radix" in uses:
        kw["radix"] = 2
    kw.update(extra)
    return BlockSpec(**kw)


def forms(name: str) -> list[bool]:
    kind = get_block_type(name)
    if "bottleneck" not in kind.uses and not isinstance(kind, MixerBlockType):
        return [True]  # a block with its own layout (rexnet): one form
    return [True, False] if getattr(kind, "supports_basic", True) else [True]


CL_CASES = [(name, bott, stride, io, extra)
            for name in TYPES for bott in forms(name) for stride in (1, 2) for io in ((16, 32), (32, 32))
            for extra in ([{}, {"avd": True}, {"avd": True, "avd_first": True}, {"radix": 1, "cardinality": 4}]
                          if name == "split_attention"
                          else [{}, {"sk_split": True, "sk_ratio": 0.125, "sk_divisor": 16}] if name == "sk"
                          else [{}, {"rexnet_divisor": 8}] if name == "rexnet"
                          else [{}, {"attention": "scse"}] if "attention" in get_block_type(name).uses else [{}])]


@pytest.mark.parametrize("name, bottleneck, stride, io, extra", CL_CASES,
                         ids=[f"{c[0]}-{'bottleneck' if c[1] else 'basic'}-s{c[2]}-{c[3][0]}to{c[3][1]}"
                              f"{''.join(f'-{k}{v}' for k, v in c[4].items())}" for c in CL_CASES])
def test_channels_last_is_kept(name, bottleneck, stride, io, extra):
    ci, co = io
    kind = get_block_type(name)
    spec = block_spec(name, bottleneck, **extra)
    ctx = BlockContext()
    assert kind.check(ci, co, stride, spec, ctx) is None
    block = kind.build(ci, co, stride, spec, ctx)
    x = torch.randn(2, ci, 8, 8).to(memory_format=torch.channels_last)
    for train in (True, False):
        block.train(train)
        out = block(x)
        assert out.shape == (2, co, 8 // stride, 8 // stride)
        assert out.is_contiguous(memory_format=torch.channels_last), f"{name} returns a {out.stride()} layout"
    # Same numbers as with a contiguous input.
    torch.testing.assert_close(block(x.contiguous()), out, rtol=1e-4, atol=1e-5)


def test_compiled_model_keeps_channels_last():
    spec = load_spec(SMALL)
    model = build_model(spec.model, in_channels=1, num_classes=10).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 1, 16, 16).to(memory_format=torch.channels_last)
    feats = model.forward_features(x)
    assert feats.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------------------
# Split attention against a loop-based reference (ResNeSt paper: per cardinal group, softmax over the radix)
# ------------------------------------------------------------------------------------------------------------


def randomize_(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)


def bn_eval(x, bn: nn.BatchNorm2d, sl: slice):
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean[sl].view(shape)) / torch.sqrt(bn.running_var[sl].view(shape) + bn.eps)
            * bn.weight[sl].view(shape) + bn.bias[sl].view(shape))


def split_attention_reference(m: SplitAttention, x: torch.Tensor, stride: int, avd: bool) -> torch.Tensor:
    """Loops over cardinal groups k and splits r. The grouped conv's group for (k, r) is r*K + k (radix-major),
    fc1/fc2 are per-cardinal-group dense layers, fc2's outputs for group k are R blocks of C/K logits."""
    conv, bn0 = m.conv[0], m.conv[1]
    fc1, bn1, fc2 = m.fc1[0], m.fc1[1], m.fc2
    R, K = m.radix, m.cardinality
    ci = x.shape[1]
    C = conv.out_channels // R          # output width
    cin_g, cout_g = ci // (K * R), C // K  # per conv group
    a = fc1.out_channels
    conv_stride = 1 if avd else stride
    outs = []
    for k in range(K):
        splits = []
        for r in range(R):
            g = r * K + k
            w = conv.weight[g * cout_g:(g + 1) * cout_g]
            u = F.conv2d(x[:, g * cin_g:(g + 1) * cin_g], w, stride=conv_stride, padding=1)
            splits.append(F.relu(bn_eval(u, bn0, slice(g * cout_g, (g + 1) * cout_g))))
        gap = sum(splits).mean((2, 3), keepdim=True)                      # (B, C/K, 1, 1)
        a_sl = slice(k * a // K, (k + 1) * a // K)
        z = F.conv2d(gap, fc1.weight[a_sl], fc1.bias[a_sl])
        z = F.relu(bn_eval(z, bn1, a_sl))
        o_sl = slice(k * R * cout_g, (k + 1) * R * cout_g)
        logits = F.conv2d(z, fc2.weight[o_sl], fc2.bias[o_sl])             # (B, R*C/K, 1, 1)
        logits = logits.view(x.shape[0], R, cout_g, 1, 1)
        weights = torch.softmax(logits, dim=1) if R > 1 else torch.sigmoid(logits)
        outs.append(sum(weights[:, r] * splits[r] for r in range(R)))
    out = torch.cat(outs, 1)
    if avd and stride > 1:
        out = F.avg_pool2d(out, 3, stride, padding=1)
    return out


SPLAT_CASES = [(1, 2, 1, False), (2, 2, 1, False), (2, 4, 1, False), (4, 2, 1, False), (2, 1, 1, False),
               (1, 1, 1, False), (2, 2, 2, False), (2, 2, 2, True), (4, 2, 2, True)]


@pytest.mark.parametrize("K, R, stride, avd", SPLAT_CASES, ids=[f"K{c[0]}-R{c[1]}-s{c[2]}{'-avd' if c[3] else ''}"
                                                                for c in SPLAT_CASES])
def test_split_attention_matches_loop_reference(K, R, stride, avd):
    ci = co = 32
    m = SplitAttention(ci, co, stride, radix=R, cardinality=K, avd=avd)
    randomize_(m, seed=K * 10 + R)
    m.eval()
    x = torch.randn(3, ci, 9, 9)
    with torch.no_grad():
        got = m(x)
        want = split_attention_reference(m, x, stride, avd)
    assert got.shape == want.shape == (3, co, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_split_attention_weights_are_a_softmax_over_radix():
    """With every split identical the radix weights must sum to 1 per channel: the output is that split."""
    K, R = 2, 4
    m = SplitAttention(32, 32, 1, radix=R, cardinality=K, avd=False)
    randomize_(m, seed=3)
    with torch.no_grad():
        # Make all R conv groups of a cardinal group identical (same input slice and weights after repetition).
        cin_g, cout_g = 32 // (K * R), 32 // K
        for r, k in itertools.product(range(1, R), range(K)):
            src, dst = k, r * K + k
            m.conv[0].weight[dst * cout_g:(dst + 1) * cout_g] = m.conv[0].weight[src * cout_g:(src + 1) * cout_g]
            for t in (m.conv[1].weight, m.conv[1].bias, m.conv[1].running_mean, m.conv[1].running_var):
                t[dst * cout_g:(dst + 1) * cout_g] = t[src * cout_g:(src + 1) * cout_g]
    m.eval()
    x = torch.randn(2, cin_g * K, 6, 6).repeat(1, R, 1, 1)  # group r*K + k sees the slice of group k
    with torch.no_grad():
        split0 = m.conv(x)[:, :32]
        torch.testing.assert_close(m(x), split0, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# SK, res2net, SE
# ------------------------------------------------------------------------------------------------------------


def test_sk_weights_sum_to_one(monkeypatch):
    m = SelectiveKernel(16, 32, 1, groups=2)
    randomize_(m, seed=1)
    m.eval()
    x = torch.randn(2, 16, 8, 8)
    captured = []
    softmax = torch.softmax

    def spy(t, dim, *a, **k):
        out = softmax(t, dim, *a, **k)
        captured.append((out, dim))
        return out

    monkeypatch.setattr(torch, "softmax", spy)
    with torch.no_grad():
        out = m(x)
    monkeypatch.undo()
    (w, dim), = captured
    assert w.shape == (2, 2, 32, 1, 1) and dim == 1
    torch.testing.assert_close(w.sum(1), torch.ones(2, 32, 1, 1))
    assert (w.amax() - w.amin()) > 0.01  # not trivially uniform
    with torch.no_grad():
        p3, p5 = m.path3(x), m.path5(x)
    torch.testing.assert_close(out, p3 * w[:, 0] + p5 * w[:, 1], rtol=1e-5, atol=1e-6)
    # Behavioural form: with the two paths made identical, the weighted sum gives that path back.
    m.path5 = m.path3
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.path3(x), rtol=1e-5, atol=1e-6)


def test_sk_paths_and_attention_width():
    m = SelectiveKernel(64, 64, 2, groups=4)
    assert m.path3[0].dilation == (1, 1) and m.path5[0].dilation == (2, 2)
    assert m.path3[0].kernel_size == m.path5[0].kernel_size == (3, 3)
    assert m.path3[0].groups == m.path5[0].groups == 4
    assert m.path3[0].stride == m.path5[0].stride == (2, 2)
    assert m.reduce[0].out_channels == make_divisible(64 / 16, 32) == 32
    assert m.select.out_channels == 128 and m.select.bias is None and m.reduce[0].bias is None


def test_res2net_first_block_vs_later_block():
    torch.manual_seed(0)
    width, scales = 4, 4
    x = torch.randn(2, width * scales, 8, 8)
    parts = torch.split(x, width, 1)
    for stride, reshapes in ((2, True), (1, True), (1, False)):
        m = Res2NetConv(width * scales, stride, scales, cardinality=2, reshapes=reshapes).eval()
        randomize_(m, seed=stride)
        with torch.no_grad():
            out = m(x)
            outs = torch.split(out, width, 1)
            if reshapes:
                # First block of a stage: no adding, every 3x3 strided, the last scale avg-pooled.
                assert isinstance(m.pool, nn.AvgPool2d)
                for i in range(scales - 1):
                    torch.testing.assert_close(outs[i], m.branch(i, parts[i]))
                torch.testing.assert_close(outs[-1], F.avg_pool2d(parts[-1], 3, stride, 1))
            else:
                # Later blocks: hierarchical adding, the last scale passes through untouched.
                assert isinstance(m.pool, nn.Identity)
                prev = None
                for i in range(scales - 1):
                    want = m.branch(i, parts[i] if prev is None else prev + parts[i])
                    torch.testing.assert_close(outs[i], want)
                    prev = want
                assert torch.equal(outs[-1], parts[-1])
        assert out.shape == (2, width * scales, 8 // stride, 8 // stride)
        assert all(c.stride == (stride, stride) and c.groups == 2 for c in m.convs)
    # In a model: the first block of each stage pools, the others do not.
    arch = load_spec(SMALL_RES2NET).model
    model = build_model(arch)
    for stage in model.stages:
        flags = [b.mixer.reshapes for b in stage]
        assert flags == [True] + [False] * (len(flags) - 1)


@pytest.mark.parametrize("co", [64, 128, 176, 200, 256, 2048])
def test_se_reduction_width(co):
    expected = make_divisible(co / 16, 8, limit=0.0)
    for name, extra in (("se", {}), ("plain", {"attention": "se"}), ("grouped", {"attention": "scse"})):
        block = get_block_type(name).build(co, co, 1, block_spec(name, True, **extra), BlockContext())
        se = block.attn
        assert se.fc1.in_channels == co and se.fc1.out_channels == expected
        assert se.fc2.in_channels == expected and se.fc2.out_channels == co
        assert se.fc1.bias is not None and se.fc2.bias is not None
        assert (se.spatial is not None) == (extra.get("attention") == "scse")
    if co == 176:  # 176/16 = 11: round_limit 0 keeps 8 where the default limit 0.9 would give 16
        assert expected == 8 and make_divisible(11) == 16


def test_se_gate_on_output_before_add():
    torch.manual_seed(0)
    block = get_block_type("se").build(32, 32, 1, block_spec("se"), BlockContext(zero_init_last=False)).eval()
    randomize_(block, seed=5)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        y = block.conv3(block.mixer(block.conv1(x)))
        gate = torch.sigmoid(block.attn.fc2(F.relu(block.attn.fc1(y.mean((2, 3), keepdim=True)))))
        torch.testing.assert_close(block(x), F.relu(y * gate + x))


# ------------------------------------------------------------------------------------------------------------
# Initialisation
# ------------------------------------------------------------------------------------------------------------

ZERO_INIT = {"plain": True, "grouped": True, "se": True, "split_attention": True, "res2net": True, "sk": False}


@pytest.mark.parametrize("name", sorted(ZERO_INIT))
def test_zero_init_last_bn(name):
    spec = block_spec(name)
    kind = get_block_type(name)
    block = kind.build(32, 32, 1, spec, BlockContext(zero_init_last=True))
    last_bn = block.conv3[1]
    assert isinstance(last_bn, nn.BatchNorm2d)
    expected = 0.0 if ZERO_INIT[name] else 1.0
    assert torch.all(last_bn.weight == expected), name
    # Every other BN starts at gamma 1.
    others = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d) and m is not last_bn]
    assert others and all(torch.all(m.weight == 1) for m in others)
    # With zero_init_last off, the last gamma is 1 too.
    off = kind.build(32, 32, 1, spec, BlockContext(zero_init_last=False))
    assert torch.all(off.conv3[1].weight == 1)
    if ZERO_INIT[name]:
        # A zero-initialised residual block starts as the identity (then ReLU).
        block.eval()
        x = torch.randn(2, 32, 6, 6)
        with torch.no_grad():
            torch.testing.assert_close(block(x), F.relu(x))


def test_zero_init_through_the_model():
    arch = load_spec(SMALL).model
    model = build_model(arch)
    for stage in model.stages:
        for block in stage:
            if hasattr(block, "conv3"):
                sk = isinstance(block.mixer, SelectiveKernel)
                assert torch.all(block.conv3[1].weight == (1.0 if sk else 0.0))


def test_kaiming_init():
    torch.manual_seed(0)
    arch = load_spec(SMALL).model
    model = build_model(arch)
    checked = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            if w.numel() >= 2000:
                assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), name
                assert abs(w.mean().item()) < 0.1 * math.sqrt(2 / fan_out) + 3 * w.std().item() / math.sqrt(w.numel())
                checked += 1
            if m.bias is not None:
                assert torch.all(m.bias == 0), name
        elif isinstance(m, nn.Linear):
            assert m.weight.std().item() == pytest.approx(0.01, rel=0.2) and torch.all(m.bias == 0)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.bias == 0)
    assert checked >= 10


# ------------------------------------------------------------------------------------------------------------
# The compiled model: torch.compile, torch.jit.trace, timm-style interface
# ------------------------------------------------------------------------------------------------------------

SMALL = """\
name: small
model:
  input_size: 16
  stem: {type: cifar, width: 16}
  downsample: avg
  stages:
    - width: 32
      stride: 1
      blocks:
        - {type: split_attention, bottleneck_ratio: 0.5, cardinality: 2, radix: 2}
        - {type: sk, bottleneck_ratio: 0.5, cardinality: 2}
        - {type: sk, bottleneck: false, sk_split: true, sk_ratio: 0.125, sk_divisor: 16}
        - {type: se, bottleneck: false}
    - width: 64
      stride: 2
      blocks:
        - {type: res2net, bottleneck_ratio: 0.5, scales: 4, attention: scse}
        - {type: grouped, bottleneck_ratio: 0.5, cardinality: 4}
        - {type: split_attention, bottleneck_ratio: 0.5, radix: 4, avd: true}
        - {type: plain, attention: se}
    - {depth: 1, width: 128, stride: 2, block: {type: split_attention, cardinality: 2, radix: 2, avd: true,
                                                avd_first: true}}
"""

SMALL_RES2NET = """\
name: r2
model:
  input_size: 16
  stem: {type: cifar, width: 16}
  stages:
    - {depth: 2, width: 32, stride: 1, block: {type: res2net, bottleneck_ratio: 0.5, scales: 2}}
    - {depth: 3, width: 64, stride: 2, block: {type: res2net, bottleneck_ratio: 0.5, scales: 4}}
"""


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    arch = load_spec(SMALL).model
    model = build_model(arch, in_channels=1, num_classes=10)
    randomize_(model, seed=7)  # non-trivial BN statistics and gammas
    return arch, model.eval()


def test_cost_of_small_model(small_model):
    arch, model = small_model
    cost = architecture_cost(arch, in_channels=1, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == cost.params


def test_torch_compile_matches_eager(small_model):
    _, model = small_model
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        got = compiled(x)
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_jit_trace_matches_eager(small_model):
    _, model = small_model
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-5)
        x2 = torch.randn(2, 1, 16, 16)
        torch.testing.assert_close(traced(x2), model(x2), rtol=1e-4, atol=1e-5)


def test_timm_style_interface(small_model):
    arch, model = small_model
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 4, 4)  # 16 px, strides 1-2-2
        assert model.num_features == 128
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, 128)
        torch.testing.assert_close(pre, feats.mean((2, 3)))
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(logits, model.fc(pre))
    model.reset_classifier(5)
    assert model.fc.out_features == 5 and model.fc.in_features == 128
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        torch.testing.assert_close(model.forward_features(x), feats)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_head_pool(pool):
    spec = load_spec(f"""
name: pool
model:
  input_size: 8
  stem: {{type: cifar, width: 8}}
  stages: [{{depth: 1, width: 16, block: {{type: plain, bottleneck: false}}}}]
  head: {{pool: {pool}}}
""")
    model = build_model(spec.model, in_channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = feats.amax((2, 3)) if pool == "max" else feats.mean((2, 3))
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), expected)


# ------------------------------------------------------------------------------------------------------------
# Issue 8: SK with split input, ResNeSt avd_first, ReXNet channel divisor, tiered deep stem
# ------------------------------------------------------------------------------------------------------------


def test_sk_split_input_each_path_reads_its_half():
    m = SelectiveKernel(32, 64, 1, groups=2, split=True, ratio=1 / 8, divisor=16)
    assert m.path3[0].in_channels == m.path5[0].in_channels == 16
    assert m.reduce[0].out_channels == make_divisible(64 / 8, 16) == 16
    randomize_(m, seed=5)
    m.eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        p3, p5 = m.path3(x[:, :16]), m.path5(x[:, 16:])
        logits = m.select(m.reduce((p3 + p5).mean((2, 3), keepdim=True))).view(2, 2, 64, 1, 1)
        w = torch.softmax(logits, dim=1)
        torch.testing.assert_close(m(x), p3 * w[:, 0] + p5 * w[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bottleneck", [True, False])
def test_sk_split_cost_and_check(bottleneck):
    kind = get_block_type("sk")
    spec = block_spec("sk", bottleneck, sk_split=True, sk_ratio=0.125, sk_divisor=16)
    full = block_spec("sk", bottleneck)
    for ci, co, stride in ((32, 64, 2), (64, 64, 1)):
        c, c_full = Counter(), Counter()
        kind.cost(c, ci, co, stride, spec, BlockContext(), 8, 8)
        kind.cost(c_full, ci, co, stride, full, BlockContext(), 8, 8)
        block = kind.build(ci, co, stride, spec, BlockContext())
        assert sum(p.numel() for p in block.parameters()) == c.params
        assert c.params < c_full.params  # the two paths' convs read half the channels each
    # Split input needs an even width at the SK's input (mid of a bottleneck, block input of a basic block).
    odd = (8, 36) if bottleneck else (9, 32)  # mid 9 of 36 at ratio 0.25; basic input 9
    bad = block_spec("sk", bottleneck, sk_split=True, **({"bottleneck_ratio": 0.25} if bottleneck else {}),
                     cardinality=1)
    assert kind.check(odd[0], odd[1], 1, bad, BlockContext())[0] == "sk_split"


AVD_FIRST_CASES = [(1, 2), (2, 2), (2, 4), (1, 1)]


@pytest.mark.parametrize("K, R", AVD_FIRST_CASES, ids=[f"K{k}-R{r}" for k, r in AVD_FIRST_CASES])
def test_avd_first_pools_before_the_conv(K, R):
    m = SplitAttention(32, 32, 2, radix=R, cardinality=K, avd=True, avd_first=True)
    randomize_(m, seed=K * 10 + R)
    m.eval()
    x = torch.randn(3, 32, 9, 9)
    with torch.no_grad():
        got = m(x)
        want = split_attention_reference(m, F.avg_pool2d(x, 3, 2, padding=1), 1, False)
    assert got.shape == (3, 32, 5, 5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # At stride 1 there is nothing to pool: avd_first changes nothing.
    m1 = SplitAttention(32, 32, 1, radix=R, cardinality=K, avd=True, avd_first=True)
    assert isinstance(m1.pool_first, nn.Identity) and isinstance(m1.pool, nn.Identity)


AVD_ARCH = """\
name: avd
model:
  input_size: 15
  stem: {type: deep_tiered, width: 32}
  downsample: avg
  stages:
    - {depth: 1, width: 64, stride: 1, block: {type: plain}}
    - {depth: 2, width: 128, stride: 2, block: {type: split_attention, radix: 4, cardinality: 2, bottleneck_ratio: 0.5,
       avd: true, avd_first: %s}}
"""


def test_avd_first_same_params_fewer_macs_and_cost_matches_the_counter():
    from torch.utils.flop_counter import FlopCounterMode

    figures = {}
    for first in ("false", "true"):
        arch = load_spec(AVD_ARCH % first).model
        cost = architecture_cost(arch, in_channels=3, num_classes=10)
        model = build_model(arch, 3, 10).eval()
        assert sum(p.numel() for p in model.parameters()) == cost.params
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.randn(1, 3, 15, 15))
        assert fc.get_total_flops() / 2 == cost.macs  # odd sizes too: ceil(15 / 2) after the pool
        figures[first] = cost
    assert figures["true"].params == figures["false"].params
    assert figures["true"].macs < figures["false"].macs


def test_tiered_deep_stem_widths():
    arch = load_spec(AVD_ARCH % "true").model
    model = build_model(arch, 3, 10)
    convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [3 * (16 // 4), 16, 32]  # timm's resnet26t at width 64: 24-32-64
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    with pytest.raises(SpecError, match="model.stem.width"):
        load_spec((AVD_ARCH % "true").replace("width: 32}", "width: 6}"))


@pytest.mark.parametrize("ci, expansion, se", [(27, 6.0, True), (16, 6.0, False), (38, 4.0, True), (32, 1.0, True)])
def test_rexnet_divisor_rounds_depthwise_and_se_widths(ci, expansion, se):
    from search_space.blocks.rexnet import LinearBottleneck

    kind = get_block_type("rexnet")
    for d in (1, 8, 16):
        spec = BlockSpec(type="rexnet", expansion=expansion, se_rexnet=se, rexnet_divisor=d)
        block = kind.build(ci, 64, 1, spec, BlockContext())
        assert isinstance(block, LinearBottleneck)
        dw = ci if expansion == 1.0 else make_divisible(round(ci * expansion), d)
        assert block.conv_dw[0].out_channels == dw and block.conv_dw[0].groups == dw
        if se:
            assert block.se.fc1.out_channels == make_divisible(int(dw / 12), d)
        c = Counter()
        kind.cost(c, ci, 64, 1, spec, BlockContext(), 8, 8)
        assert sum(p.numel() for p in block.parameters()) == c.params


@pytest.mark.parametrize("text, path", [
    ("{type: rexnet, expansion: 1, se_rexnet: false, rexnet_divisor: 8}", "rexnet_divisor"),
    ("{type: split_attention, avd: false, avd_first: true}", "avd_first"),
    ("{type: plain, sk_split: true}", "sk_split"),
    ("{type: sk, avd_first: true}", "avd_first"),
])
def test_new_keys_where_they_do_not_apply_are_errors(text, path):
    spec = f"model:\n  input_size: 16\n  stages:\n    - {{width: 64, block: {text}}}\n"
    with pytest.raises(SpecError, match=rf"model\.stages\.0\.block\.{path}"):
        load_spec(spec)


def test_avd_first_is_asked_only_after_avd_is_drawn_true():
    from search_space.sampling import RandomSuggester, sample

    space = load_spec("model:\n  input_size: 16\n  stages:\n    - {width: 64, stride: 2, block: "
                      "{type: split_attention, avd: {choice: [false, true]}, avd_first: {choice: [false, true]}}}\n")
    asked = set()
    for seed in range(30):
        rec = RandomSuggester(seed)
        arch = sample(space, rec)
        avd = rec.params["stages.0.blocks.0.avd"]
        assert ("stages.0.blocks.0.avd_first" in rec.params) == avd
        assert arch.model.stages[0].blocks[0].avd_first == rec.params.get("stages.0.blocks.0.avd_first", False)
        asked.add(avd)
    assert asked == {False, True}


def test_family_space_draws_the_new_keys():
    """spaces/family.yaml offers every key of issue 8, so its 200-sample tests (tests/test_spaces.py: compile, cost
    equal to the built module, MACs against the flop counter) cover them; here: its samples really draw them."""
    from search_space.sampling import InfeasibleSample, RandomSuggester, sample

    space = load_spec(Path(__file__).resolve().parents[1] / "spaces" / "family.yaml")
    seen = set()
    for seed in range(200):
        try:
            arch = sample(space, RandomSuggester(seed)).model
        except InfeasibleSample:
            continue
        seen.add(("stem", arch.stem.type))
        for i, stage in enumerate(arch.stages):
            for b in stage.blocks:
                if b.type == "sk":
                    seen.add(("sk_split", b.sk_split))
                    seen.add(("sk_ratio", b.sk_ratio))
                if b.type == "split_attention" and b.avd and stage.stride > 1:
                    seen.add(("avd_first", b.avd_first))
    assert {("stem", "deep_tiered"), ("sk_split", True), ("sk_split", False), ("sk_ratio", 0.125),
            ("avd_first", True), ("avd_first", False)} <= seen
