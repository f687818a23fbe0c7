"""Every shipped search space (``spaces/*.yaml``): seeded random samples round-trip through YAML, are
deterministic, compile, and the analytic cost equals the built module; a subset trains a step and has its MACs
checked against torch's flop counter. Sampling is conditional and its parameter names are stable paths; Optuna
trials (fixed or live) drive it directly.
"""

from __future__ import annotations

import math
import re
import warnings

import optuna
import pytest
import torch
import torch.nn.functional as F

from conftest import SPACES, counted_macs, n_params
from search_space.blocks import get_block_type, relevant_fields
from search_space.compiler import build_model
from search_space.cost import architecture_cost
from search_space.sampling import FixedSuggester, InfeasibleSample, RandomSuggester, sample
from search_space.schema import Categorical, is_choice
from search_space.spec import dump_spec, load_spec

pytestmark = pytest.mark.usefixtures("single_thread")

N_SAMPLES = 200
TRAIN_EVERY = 10
IDS = [p.stem for p in SPACES]



@pytest.fixture(scope="module", params=SPACES, ids=IDS)
def space(request):
    spec = load_spec(request.param)
    assert not spec.is_fixed(), f"{request.param} has no choices"
    return spec


def draw(space, seed):
    """A seeded sample, or None when it is infeasible (the InfeasibleSample must name a model field)."""
    try:
        return sample(space, RandomSuggester(seed))
    except InfeasibleSample as e:
        assert e.path.startswith("model."), e
        return None


def test_spaces_are_shipped():
    names = {p.stem for p in SPACES}
    assert {"resnet", "resnest", "family"} <= names


def test_samples_roundtrip_deterministic_and_costed(space):
    dumps, infeasible = {}, 0
    for seed in range(N_SAMPLES):
        arch = draw(space, seed)
        if arch is None:
            infeasible += 1
            continue
        assert arch.is_fixed()
        # Deterministic for a seed.
        assert draw(space, seed) == arch
        # Dumps to YAML and loads back equal (and dumping is stable).
        text = dump_spec(arch)
        back = load_spec(text)
        assert back == arch, f"seed {seed}:\n{text}"
        assert dump_spec(back) == text
        assert back.is_fixed()
        dumps[seed] = text
        # Compiles, and the analytic parameter count is exact.
        cost = architecture_cost(arch.model)
        model = build_model(arch.model)
        assert n_params(model) == cost.params, f"seed {seed}:\n{text}"
        assert sum(r.params for r in cost.rows) == cost.params
    feasible = N_SAMPLES - infeasible
    assert feasible / N_SAMPLES > 0.5, f"only {feasible} of {N_SAMPLES} samples are feasible"
    # Other seeds give other architectures: neighbouring seeds differ, and the space is really explored.
    seeds = sorted(dumps)
    assert any(dumps[a] != dumps[b] for a, b in zip(seeds, seeds[1:]))
    assert len(set(dumps.values())) > feasible // 2


def test_samples_train_step_and_macs(space):
    size = space.model.input_size
    checked = 0
    for seed in range(0, N_SAMPLES, TRAIN_EVERY):
        arch = draw(space, seed)
        if arch is None:
            continue
        model = build_model(arch.model, in_channels=1, num_classes=10)
        cost = architecture_cost(arch.model, in_channels=1, num_classes=10)
        assert n_params(model) == cost.params
        # One training step on a batch of two.
        model.train()
        x = torch.randn(2, 1, size, size)
        out = model(x)
        assert out.shape == (2, 10)
        loss = F.cross_entropy(out, torch.tensor([1, 7]))
        loss.backward()
        assert math.isfinite(loss.item())
        for name, p in model.named_parameters():
            assert p.grad is not None, f"seed {seed}: {name} gets no gradient (unused parameter?)"
            assert torch.isfinite(p.grad).all(), f"seed {seed}: {name}"
        # MACs against torch's flop counter (eval, batch 1).
        measured = counted_macs(model, 1, size)
        assert cost.macs == pytest.approx(measured, rel=0.01), f"seed {seed}:\n{dump_spec(arch)}"
        checked += 1
    assert checked > N_SAMPLES // TRAIN_EVERY // 2


# ------------------------------------------------------------------------------------------------------------
# Conditional sampling and parameter names
# ------------------------------------------------------------------------------------------------------------


class Recorder(RandomSuggester):
    """A seeded random suggester that records every question in order: (name, kind, choices/range)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.asked = []

    def suggest_categorical(self, name, choices):
        self.asked.append((name, "categorical", tuple(choices)))
        return super().suggest_categorical(name, choices)

    def suggest_int(self, name, low, high, step=1, log=False):
        self.asked.append((name, "int", (low, high, step, log)))
        return super().suggest_int(name, low, high, step, log)

    def suggest_float(self, name, low, high, step=None, log=False):
        self.asked.append((name, "float", (low, high, step, log)))
        return super().suggest_float(name, low, high, step, log)

    @property
    def names(self):
        return [a[0] for a in self.asked]


NAME = re.compile(r"^(?:(?:stem|widths|head)\.\w+|downsample|input_size|in_channels|num_classes|zero_init_last"
                  r"|stages\.\d+\.(?:depth|width|stride)|stages\.\d+\.blocks\.\d+\.\w+|train\.\w+)$")
BLOCK_NAME = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(\w+)$")


def template_of(space, i, j):
    stage = space.model.stages[i]
    if stage.blocks is not None:
        return stage.blocks[j]
    return stage.block


@pytest.mark.parametrize("path", SPACES, ids=IDS)
def test_conditional_questions(path):
    space = load_spec(path)
    signatures = {}
    for seed in range(40):
        rec = Recorder(seed)
        arch = sample(space, rec, check=False)
        names = rec.names
        assert len(names) == len(set(names)), "a parameter was asked twice"
        for name, kind, args in rec.asked:
            assert NAME.match(name), f"unstable parameter name {name!r}"
            # One name, one distribution, in every sample (Optuna requires it).
            assert signatures.setdefault(name, (kind, args)) == (kind, args), name
        stages = arch.model.stages
        for name in names:
            m = BLOCK_NAME.match(name)
            if not m:
                continue
            i, j, key = int(m[1]), int(m[2]), m[3]
            # Never a block beyond the sampled depth, and asked after the depth.
            assert j < len(stages[i].blocks), f"{name} asked with depth {len(stages[i].blocks)}"
            if f"stages.{i}.depth" in names:
                assert names.index(f"stages.{i}.depth") < names.index(name)
            block = stages[i].blocks[j]
            if key == "type":
                continue
            if f"stages.{i}.blocks.{j}.type" in names:  # the type is drawn first, then what it reads
                assert names.index(f"stages.{i}.blocks.{j}.type") < names.index(name)
            else:
                assert not is_choice(template_of(space, i, j).type)
            # Only what the drawn type reads: radix only for split_attention, no cardinality for plain/se ...
            assert key in get_block_type(block.type).uses, f"{name} asked for a {block.type} block"
            assert key in relevant_fields(block), f"{name} asked though it does not matter here"
            if key == "radix":
                assert block.type == "split_attention"
            if key == "cardinality":
                assert block.type not in ("plain", "se")
            if key == "bottleneck_ratio":
                assert block.bottleneck
            if key == "se_ratio":
                assert block.attention != "none" or block.type == "se"
        # ... and everything that does matter and is a real choice was asked.
        for i, stage in enumerate(stages):
            for j, block in enumerate(stage.blocks):
                template = template_of(space, i, j)
                for key in relevant_fields(block):
                    value = getattr(template, key)
                    if is_choice(value) and not (isinstance(value, Categorical) and len(value.options) == 1):
                        assert f"stages.{i}.blocks.{j}.{key}" in names, (key, block)


def test_names_are_stable_paths():
    space = load_spec(next(p for p in SPACES if p.stem == "resnest"))
    seen, types_with_radix = set(), set()
    for seed in range(40):
        rec = Recorder(seed)
        arch = sample(space, rec, check=False)
        seen.update(rec.names)
        for name in rec.names:
            if name.endswith(".radix"):
                i, j = map(int, BLOCK_NAME.match(name).groups()[:2])
                types_with_radix.add(arch.model.stages[i].blocks[j].type)
    assert {"stem.width", "downsample", "stages.0.depth", "stages.0.width", "stages.0.blocks.0.type",
            "stages.0.blocks.1.type", "stages.2.blocks.1.radix", "train.lr"} <= seen
    assert "stages.0.blocks.2.type" not in seen  # depth is at most 2 in this space
    assert types_with_radix == {"split_attention"}
    assert not any(n.startswith("search.") or n.startswith("model.") for n in seen)


def test_fixed_trial_and_fixed_suggester_replay():
    for path in SPACES:
        space = load_spec(path)
        for seed in range(5):
            rec = RandomSuggester(seed)
            arch = sample(space, rec, check=False)
            assert sample(space, optuna.trial.FixedTrial(dict(rec.params)), check=False) == arch
            assert sample(space, FixedSuggester(rec.params), check=False) == arch


def test_optuna_trial_drives_sample():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_spec(next(p for p in SPACES if p.stem == "family"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    archs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(6):
            trial = study.ask()
            try:
                arch = sample(space, trial)
            except InfeasibleSample:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            archs[trial.number] = arch
            study.tell(trial, architecture_cost(arch.model).params / 1e6)
    assert archs
    for t in study.trials:
        if t.number not in archs:
            continue
        assert "stages.0.depth" in t.params and "train.lr" in t.params
        # The trial's parameters replay the same architecture, and are exactly the questions it was asked.
        replay = ReplayRecorder(t.params)
        assert sample(space, replay, check=False) == archs[t.number]
        assert sorted(replay.names) == sorted(t.params)


class ReplayRecorder(FixedSuggester):
    """Answers from a finished trial's parameters and records the names asked."""

    def __init__(self, params):
        super().__init__(params)
        self.names = []

    def _get(self, name):
        self.names.append(name)
        return super()._get(name)
