"""A fuzzer over the spec schema: random mutations of every shipped spec must end in a SpecError or a valid spec.

Each case takes a shipped spec (spaces/ and spaces/zoo/), applies a few random mutations (values of another type,
huge, negative, zero, NaN/inf, integral floats, long or multi-line strings; keys deleted, renamed, duplicated,
added; values wrapped in choices and ranges; lines of the YAML text duplicated, dropped or cut), and loads it.
Allowed outcomes: a :class:`SpecError` whose message is one short line, or a valid spec whose random samples are
either infeasible (an ``InfeasibleSample``, also one line) or architectures that dump and load back equal and
build (on the ``meta`` device, so nothing is allocated) with exactly the parameters, MACs and output shape the
cost model predicts. Any other exception, or a case running past its time limit, fails with the YAML to replay.

The default suite runs ``FUZZ_CASES`` cases (seeded, so a failure reproduces); ``-m slow`` runs many more. A
systematic sweep sets every field of every section (block fields under each type that reads them) to the same odd
values: a third of the pairs in the default suite, all of them under ``-m slow``.
"""

from __future__ import annotations

import copy
import math
import random
import re
import signal
from collections import Counter

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from conftest import SPACES, ZOO
from search_space.compiler import build_model
from search_space.cost import architecture_cost
from search_space.sampling import InfeasibleSample, RandomSuggester, sample
from search_space.schema import SpecError
from search_space.spec import dump_spec, load_spec

pytestmark = pytest.mark.usefixtures("single_thread")

FUZZ_CASES = 300          # default suite
FUZZ_CASES_SLOW = 3000    # -m slow
BUILD_LIMIT = 5_000_000   # default suite: build samples up to this many parameters (the slow test builds all)
CASE_TIME_LIMIT_S = 60    # a case (load + samples + builds) taking longer is a hang
SHIPPED = {p.name: p.read_text() for p in SPACES + ZOO}

ODD_VALUES = [
    None, True, False, 0, -1, 1, 2, 3, 7, 2.0, 0.5, -0.5, 1e-300, 1e308, -1e308, 10**12, 10**400, -(10**30),
    math.nan, math.inf, -math.inf, "", "x", "plain", "none", "1.0e6", "nan", "a\nb", "k" * 5000, "/tmp/x", "../../x",
    [], [1], [1, 2], [[[]]], {}, {"a": 1}, {"choice": []}, {"int": [1, 2]}, {"float": [0.1, 0.2]},
    {"choice": [1, 2], "int": [1, 2]}, {"int": [3, 1]}, {"float": [0, 1], "log": True},
    {"float": [0.1, 1], "step": math.nan},
]
ODD_KEYS = ["", "zzz", "typo", "a\nb", "k" * 300, "choice", "int", "float", "step", "log", 1, None, True]


def nodes(tree, path=()):
    """Every (path, value) of a YAML tree, the root included."""
    yield path, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from nodes(v, path + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from nodes(v, path + (i,))


def get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def put(tree, path, value):
    if not path:
        return value
    get(tree, path[:-1])[path[-1]] = value
    return tree


def wrap_in_choice(rng: random.Random, value):
    """A value turned into one of the choice forms, sometimes with odd bounds or steps."""
    other = rng.choice(ODD_VALUES)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return {"choice": rng.choice([[value], [value, other], [value, value]])}
    lo, hi = sorted([value, value + rng.choice([0, 1, 3, 0.5, 100, 10**6])])
    kind = rng.choice(["int", "float", "choice"])
    out = {kind: [lo, hi]} if kind != "choice" else {"choice": [value, hi]}
    if kind != "choice" and rng.random() < 0.5:
        out[rng.choice(["step", "log"])] = rng.choice([1, 2, 0.3, 0.7, True, math.nan, 0, -1])
    return out


def mutate_tree(rng: random.Random, tree):
    """One structural or value mutation of a YAML data tree (returns the new tree)."""
    path, value = rng.choice(list(nodes(tree)))
    op = rng.choice(["value", "value", "value", "delete", "rename", "add_key", "wrap", "wrap", "dup_item",
                     "int_float", "scale"])
    if op == "value":
        return put(tree, path, copy.deepcopy(rng.choice(ODD_VALUES)))
    if op == "wrap":
        return put(tree, path, wrap_in_choice(rng, value))
    if op == "int_float" and isinstance(value, int) and not isinstance(value, bool):
        return put(tree, path, float(value))
    if op == "scale" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return put(tree, path, type(value)(value * rng.choice([-1, 0, 2, 16, 1000, 10**6])))
    if op == "dup_item" and isinstance(value, list) and value:
        value.insert(rng.randrange(len(value) + 1), copy.deepcopy(rng.choice(value)))
        return tree
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        if op == "delete":
            del value[key]
        elif op == "rename":
            new = rng.choice([str(key)[:-1], str(key) + "s", str(key)[::-1], str(key).upper(), rng.choice(ODD_KEYS)])
            value[new] = value.pop(key)
        elif op == "add_key":
            value[rng.choice(ODD_KEYS + list(value))] = copy.deepcopy(rng.choice(ODD_VALUES))
    return tree


def mutate_text(rng: random.Random, text: str) -> str:
    """A mutation of the YAML text itself: what a tree cannot hold (duplicate keys, aliases, broken syntax)."""
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    op = rng.choice(["dup_line", "drop_line", "cut", "alias", "indent", "junk", "long_number"])
    if op == "dup_line":
        lines.insert(i, lines[i])
    elif op == "drop_line":
        del lines[i]
    elif op == "cut":
        lines = lines[:i] + [lines[i][: rng.randrange(len(lines[i]) + 1)]]
    elif op == "alias":
        lines.insert(0, "x-anchor: &a {depth: 1}")
        lines[i] = lines[i].replace("1", "*a", 1)
    elif op == "long_number":  # beyond what Python converts to text (4300 digits), in decimal or hex
        lines[i] = re.sub(r"\b\d+\b", rng.choice(["1" + "0" * 5000, "0x1" + "0" * 5000, "9" * 120]), lines[i], count=1)
    elif op == "indent":
        lines[i] = " " * rng.choice([1, 2, 3, 8]) + lines[i]
    else:
        lines[i] += rng.choice([" [", "}", ": :", " &", " *", " !!python/object:os.system", "\t", " #", "\x00"])
    return "\n".join(lines) + "\n"


def make_case(seed: int) -> tuple[str, str]:
    """(which shipped spec, mutated YAML text) for a seed."""
    rng = random.Random(seed)
    name = rng.choice(sorted(SHIPPED))
    tree = yaml.safe_load(SHIPPED[name])
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        tree = mutate_tree(rng, tree)
    text = yaml.safe_dump(tree, sort_keys=False, width=10**6, allow_unicode=True)
    if rng.random() < 0.25:
        text = mutate_text(rng, text)
    return name, text


def check_error(e: SpecError) -> None:
    line = str(e)
    assert line.isprintable() and len(line.splitlines()) == 1, repr(line)  # no breaks, escapes or separators
    assert len(line) <= 1200, f"error line of {len(line)} characters: {line[:200]}..."


def check_architecture(arch, build_limit: float) -> str:
    """The sample dumps and loads back equal and builds on the meta device exactly as the cost model says
    (a sample above ``build_limit`` parameters only gets its cost)."""
    assert arch.is_fixed()
    again = load_spec(dump_spec(arch))
    assert again.model == arch.model and again.train == arch.train, "a dumped sample loads back different"
    cost = architecture_cost(arch.model)
    if cost.params > build_limit:
        return "costed"
    with torch.device("meta"):
        model = build_model(arch.model)
        assert sum(p.numel() for p in model.parameters()) == cost.params
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model.eval()(torch.zeros(1, *cost.input_shape))
    assert tuple(out.shape) == (1, cost.rows[-1].out_shape[0])
    assert counter.get_total_flops() / 2 == cost.macs
    return "built"


def run_case(seed: int, build_limit: float = BUILD_LIMIT) -> list[str]:
    """Outcomes of one case: 'error', or 'valid' plus 'built', 'costed' or 'infeasible' per sample drawn."""
    name, text = make_case(seed)

    def too_long(signum, frame):
        raise TimeoutError(f"case {seed} ({name}) ran past {CASE_TIME_LIMIT_S}s")

    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(CASE_TIME_LIMIT_S)
    try:
        try:
            spec = load_spec(text)
        except SpecError as e:
            check_error(e)
            return ["error"]
        outcomes = ["valid"]
        for s in range(2):
            try:
                arch = sample(spec, RandomSuggester(seed * 7 + s))
            except InfeasibleSample as e:
                check_error(e)
                outcomes.append("infeasible")
                continue
            outcomes.append(check_architecture(arch, build_limit))
        return outcomes
    except Exception as e:  # anything but a SpecError is the bug this test looks for
        raise AssertionError(f"case {seed} from {name} raised {type(e).__name__}: {str(e)[:300]}\n"
                             f"--- the YAML that replays it ---\n{text[:5000]}") from e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fuzz(cases: int, first_seed: int = 0, build_limit: float = BUILD_LIMIT) -> Counter:
    tally = Counter()
    for seed in range(first_seed, first_seed + cases):
        tally.update(run_case(seed, build_limit))
    return tally


def test_fuzz_shipped_specs():
    tally = fuzz(FUZZ_CASES)
    # The mutations must reach both sides: most are refused, and some still validate and build.
    assert tally["error"] + tally["valid"] == FUZZ_CASES
    assert tally["error"] >= FUZZ_CASES // 4, tally
    assert tally["valid"] >= FUZZ_CASES // 20 and tally["built"] > 0, tally


@pytest.mark.slow
def test_fuzz_shipped_specs_long():
    tally = fuzz(FUZZ_CASES_SLOW, first_seed=FUZZ_CASES, build_limit=math.inf)
    assert tally["error"] + tally["valid"] == FUZZ_CASES_SLOW
    assert tally["built"] > 0, tally


def test_mutations_are_deterministic():
    assert make_case(12345) == make_case(12345)
    assert len({make_case(s)[1] for s in range(20)}) == 20


# ----------------------------------------------------------------------------------------------------------------
# Systematic: every field of every section, set to every odd value
# ----------------------------------------------------------------------------------------------------------------

BASE = {
    "name": "t",
    "model": {"input_size": 16, "stem": {"type": "cifar", "width": 16},
              "stages": [{"depth": 2, "width": 64, "stride": 1, "block": {"type": "plain"}}]},
    "train": {"epochs": 1},
    "search": {"trials": 2},
}


def field_paths():
    """(path, block type to use) for every field a spec can set; block fields get a type that reads them."""
    import dataclasses

    from search_space.blocks import block_type_names, get_block_type
    from search_space.config import SearchConfig, TrainConfig
    from search_space.spec import BlockSpec, HeadSpec, ModelSpec, Spec, StageSpec, StemSpec, WidthSpec

    out = []
    for prefix, cls in [((), Spec), (("model",), ModelSpec), (("model", "stem"), StemSpec),
                        (("model", "widths"), WidthSpec), (("model", "head"), HeadSpec),
                        (("model", "stages", 0), StageSpec), (("train",), TrainConfig), (("search",), SearchConfig)]:
        out += [(prefix + (f.name,), None) for f in dataclasses.fields(cls)]
    for f in dataclasses.fields(BlockSpec):
        users = [n for n in block_type_names() if f.name in get_block_type(n).uses] or ["plain"]
        out += [(("model", "stages", 0, "block", f.name), t) for t in users]
    return out


def run_field_case(path, block_type, value) -> str:
    tree = copy.deepcopy(BASE)
    if block_type:
        tree["model"]["stages"][0]["block"]["type"] = block_type
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = copy.deepcopy(value)
    text = yaml.safe_dump(tree, sort_keys=False, width=10**6)
    try:
        try:
            spec = load_spec(text)
        except SpecError as e:
            check_error(e)
            return "error"
        try:
            arch = sample(spec, RandomSuggester(0))
        except InfeasibleSample as e:
            check_error(e)
            return "infeasible"
        return check_architecture(arch, BUILD_LIMIT)
    except Exception as e:  # anything but a SpecError is a bug
        raise AssertionError(f"{'.'.join(map(str, path))} = {str(value)[:80]!r} (block type {block_type}) raised "
                             f"{type(e).__name__}: {str(e)[:300]}") from e


def sweep(share: int) -> Counter:
    """Field i gets the odd values j with (i + j) % share == 0: every value on every field when share is 1."""
    tally = Counter()
    for i, (path, block_type) in enumerate(field_paths()):
        for j, value in enumerate(ODD_VALUES):
            if (i + j) % share == 0:
                tally[run_field_case(path, block_type, value)] += 1
    return tally


def test_every_field_with_odd_values():
    tally = sweep(3)
    assert tally["error"] > 0 and tally["built"] > 0, tally


@pytest.mark.slow
def test_every_field_with_every_odd_value():
    tally = sweep(1)
    assert sum(tally.values()) == len(field_paths()) * len(ODD_VALUES)
