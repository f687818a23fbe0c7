"""Bad specs are rejected with exit code 2 and one line naming the field path and the bad value.

Every case goes through the real CLI (``search validate``) in-process; two also run as a subprocess to check the
installed entry point prints no traceback. The same cases are checked against ``load_spec`` for the exact path.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import ROOT
from search_space.sampling import InfeasibleSample, RandomSuggester, sample
from search_space.schema import SpecError
from search_space.spec import load_spec, parse_spec

pytestmark = pytest.mark.usefixtures("single_thread")

# A small fixed architecture every model-level case starts from (it validates as written).
GOOD = """\
name: t
model:
  input_size: 16
  stem: {type: cifar, width: 16}
  stages:
    - {depth: 1, width: 32, stride: 1, block: {type: plain}}
"""


def with_stage(stage: str, model_extra: str = "", rest: str = "") -> str:
    """A spec whose single stage is ``stage`` (a YAML flow mapping)."""
    return (f"name: t\nmodel:\n  input_size: 16\n  stem: {{type: cifar, width: 16}}\n{model_extra}"
            f"  stages:\n    - {stage}\n{rest}")


def with_train(train: str) -> str:
    return GOOD + f"train: {train}\n"


def with_search(search: str) -> str:
    return GOOD + f"search: {search}\n"


# (id, YAML text, exact SpecError.path, substrings the one-line message must contain)
CASES = [
    # -- YAML and top level --------------------------------------------------------------------------------
    ("yaml_syntax", "name: x\nmodel:\n  stages: [{depth: 1}\n  foo: bar\n", "",
     ["YAML syntax error", "line 4", "column 3"]),
    ("yaml_tab_indent", "name: x\nmodel:\n\tstages: []\n", "", ["YAML syntax error", "line 3", "column 1"]),
    ("top_is_list", "- 1\n- 2\n", "", ["top level must be a mapping"]),
    ("top_is_scalar", "just words\n", "", ["top level must be a mapping"]),
    ("missing_model", "name: x\ntrain: {epochs: 2}\n", "model", ["missing"]),
    ("missing_stages", "name: x\nmodel: {stem: {type: cifar}}\n", "model.stages", ["missing"]),
    ("empty_stages", "name: x\nmodel: {stages: []}\n", "model.stages", ["[]", "non-empty"]),
    ("stages_not_list", "name: x\nmodel: {stages: {depth: 1}}\n", "model.stages", ["{'depth': 1}"]),
    # -- unknown keys at every level, with "did you mean" ----------------------------------------------------
    ("unknown_top", GOOD.replace("name: t", "nmae: t"), "nmae", ["unknown key", "did you mean 'name'"]),
    ("unknown_model", with_stage("{depth: 1}", model_extra="  stme: {type: cifar}\n"), "model.stme",
     ["unknown key", "did you mean 'stem'"]),
    ("unknown_stem", GOOD.replace("width: 16}", "widht: 16}"), "model.stem.widht", ["did you mean 'width'"]),
    ("unknown_stage", with_stage("{depht: 2, width: 32}"), "model.stages.0.depht",
     ["unknown key", "did you mean 'depth'"]),
    ("unknown_block", with_stage("{depth: 1, width: 32, block: {type: grouped, cardinalty: 2}}"),
     "model.stages.0.block.cardinalty", ["unknown key", "did you mean 'cardinality'"]),
    ("unknown_head", with_stage("{depth: 1}", rest="  head: {dropuot: 0.1}\n"), "model.head.dropuot",
     ["did you mean 'dropout'"]),
    ("unknown_train", with_train("{epoch: 3}"), "train.epoch", ["unknown key", "did you mean 'epochs'"]),
    ("unknown_search", with_search("{trails: 3}"), "search.trails", ["unknown key", "did you mean 'trials'"]),
    ("unknown_no_hint", with_train("{zzzzqqq: 1}"), "train.zzzzqqq", ["unknown key", "allowed:"]),
    # -- wrong types -----------------------------------------------------------------------------------------
    ("str_for_depth", with_stage("{depth: two, width: 32}"), "model.stages.0.depth", ["'two'", "integer"]),
    ("float_for_int", with_stage("{depth: 1, width: 64.5}"), "model.stages.0.width", ["64.5", "integer"]),
    ("list_for_stem", with_stage("{depth: 1}").replace("{type: cifar, width: 16}", "[cifar, 16]"), "model.stem",
     ["['cifar', 16]", "not a mapping"]),
    ("list_for_block", with_stage("{depth: 1, block: [plain]}"), "model.stages.0.block",
     ["['plain']", "not a mapping"]),
    ("list_for_train", GOOD + "train: [digits]\n", "train", ["['digits']", "not a mapping"]),
    ("bool_for_number", with_train("{lr: true}"), "train.lr", ["true", "not a number"]),
    ("bool_for_int", with_stage("{depth: 1, width: true}"), "model.stages.0.width", ["true", "integer"]),
    ("null_for_int", with_stage("{depth: null}"), "model.stages.0.depth", ["null"]),
    ("str_for_bool", with_stage("{depth: 1, block: {type: plain, bottleneck: 'no'}}"),
     "model.stages.0.block.bottleneck", ["'no'", "boolean"]),
    # -- out-of-range and not-allowed values ------------------------------------------------------------------
    ("depth_zero", with_stage("{depth: 0}"), "model.stages.0.depth", ["0 is too small", ">= 1"]),
    ("stride_three", with_stage("{depth: 1, stride: 3}"), "model.stages.0.stride", ["3", "one of 1, 2"]),
    ("negative_lr", with_train("{lr: -0.1}"), "train.lr", ["-0.1", "too small"]),
    ("val_fraction", with_train("{val_fraction: 1.5}"), "train.val_fraction", ["1.5", "too large"]),
    ("bad_block_type", with_stage("{depth: 1, block: {type: splitattention}}"), "model.stages.0.block.type",
     ["'splitattention'", "did you mean 'split_attention'"]),
    ("bad_stem_type", GOOD.replace("type: cifar", "type: conv5"), "model.stem.type",
     ["'conv5'", "did you mean 'conv7'"]),
    ("bad_dataset", with_train("{dataset: cifar11}"), "train.dataset", ["'cifar11'", "did you mean 'cifar10'"]),
    ("bad_objective", with_search("{objectives: [accuracy]}"), "search.objectives.0",
     ["'accuracy'", "did you mean 'val_accuracy'"]),
    # -- choice syntax ----------------------------------------------------------------------------------------
    ("choice_empty", with_stage("{depth: {choice: []}}"), "model.stages.0.depth.choice", ["[]", "non-empty"]),
    ("choice_not_list", with_stage("{depth: {choice: 3}}"), "model.stages.0.depth.choice", ["3", "list"]),
    ("choice_duplicate", with_stage("{depth: {choice: [1, 1]}}"), "model.stages.0.depth.choice",
     ["[1, 1]", "twice"]),
    ("choice_bad_option", with_stage("{depth: 1, block: {type: {choice: [plain, sk, foo]}}}"),
     "model.stages.0.block.type.choice.2", ["'foo'"]),
    ("choice_option_range", with_stage("{depth: {choice: [1, 0]}}"), "model.stages.0.depth.choice.1",
     ["0 is too small"]),
    ("int_reversed", with_stage("{depth: {int: [5, 1]}}"), "model.stages.0.depth.int", ["low 5", "high 1"]),
    ("int_float_bound", with_stage("{depth: {int: [1.5, 3]}}"), "model.stages.0.depth.int.0",
     ["1.5", "integer"]),
    ("int_not_pair", with_stage("{depth: {int: [1, 2, 3]}}"), "model.stages.0.depth.int", ["[1, 2, 3]", "pair"]),
    ("float_log_zero", with_train("{lr: {float: [0, 1], log: true}}"), "train.lr.float",
     ["log range", "low > 0", "0"]),
    ("choice_and_int", with_stage("{depth: {choice: [1, 2], int: [1, 2]}}"), "model.stages.0.depth",
     ["exactly one of", "'choice'", "'int'"]),
    ("choice_unknown_key", with_stage("{depth: {int: [1, 2], stpe: 1}}"), "model.stages.0.depth.stpe",
     ["unknown key", "'int' choice"]),
    ("choice_in_search", with_search("{trials: {choice: [5, 10]}}"), "search.trials",
     ["choice is not allowed"]),
    ("choice_in_search_budget", with_search("{max_params: {float: [1.0e5, 1.0e6]}}"), "search.max_params",
     ["choice is not allowed"]),
    # -- keys that do not apply --------------------------------------------------------------------------------
    ("radix_on_plain", with_stage("{depth: 1, block: {type: plain, radix: 2}}"), "model.stages.0.block.radix",
     ["'plain'", "split_attention"]),
    ("scales_on_sk", with_stage("{depth: 1, block: {type: sk, scales: 2}}"), "model.stages.0.block.scales",
     ["'sk'", "res2net"]),
    ("ratio_on_basic", with_stage("{depth: 1, block: {type: plain, bottleneck: false, bottleneck_ratio: 0.5}}"),
     "model.stages.0.block.bottleneck_ratio", ["ignored", "'plain'"]),
    ("radix_in_blocks_list", with_stage("{width: 32, blocks: [{type: plain}, {type: se, radix: 2}]}"),
     "model.stages.0.blocks.1.radix", ["'se'"]),
    ("linear_keys_without_schedule", with_stage("{depth: 1}", model_extra="  widths: {start: 16}\n"),
     "model.widths.start", ["schedule: linear"]),
    # -- impossible combinations in a fixed architecture --------------------------------------------------------
    ("splat_k_times_r", with_stage("{depth: 1, width: 64, block: {type: split_attention, radix: 4, cardinality: 4, "
                                   "bottleneck_ratio: 0.125}}"),
     "model.stages.0.block.radix", ["4*4 = 16", "width 8"]),
    ("grouped_cardinality", with_stage("{depth: 1, width: 64, block: {type: grouped, cardinality: 3}}"),
     "model.stages.0.block.cardinality", ["3 does not divide", "16"]),
    ("res2net_basic", with_stage("{depth: 1, block: {type: res2net, bottleneck: false}}"),
     "model.stages.0.block.bottleneck", ["res2net"]),
    ("res2net_scales", with_stage("{depth: 1, width: 64, block: {type: res2net, scales: 3}}"),
     "model.stages.0.block.scales", ["3 does not divide", "mid width 16"]),
    ("stride_on_1x1_map", "name: t\nmodel:\n  input_size: 4\n  stem: {type: conv7, width: 16}\n  stages:\n"
                          "    - {depth: 1, width: 32, stride: 1}\n    - {depth: 1, width: 64, stride: 2}\n",
     "model.stages.1.stride", ["2 would shrink a 1x1", "input_size 4"]),
    ("input_below_stem_stride", "name: t\nmodel:\n  input_size: 2\n  stem: {type: conv7}\n  stages:\n"
                                "    - {depth: 1}\n", "model.input_size", ["2", "stride 4"]),
    ("deep_stem_odd", GOOD.replace("{type: cifar, width: 16}", "{type: deep, width: 33}"), "model.stem.width",
     ["33", "even"]),
    ("depth_vs_blocks", with_stage("{depth: 3, width: 32, blocks: [{type: plain}, {type: se}]}"),
     "model.stages.0.depth", ["3 disagrees", "2 blocks"]),
    ("depth_choice_vs_blocks", with_stage("{depth: {int: [1, 3]}, blocks: [{type: plain}]}"),
     "model.stages.0.depth", ["disagrees", "1 blocks"]),
    # -- hostile input (issue 10; tests/test_hostile_input.py has the rest) --------------------------------------
    ("duplicate_key", GOOD + "model: {stages: [{depth: 1}]}\n", "model", ["duplicate key", "line 2", "line 7"]),
    ("alias", GOOD + "train: &t {epochs: 2}\nsearch: *t\n", "search", ["aliases", "*t"]),
    ("stride_float", with_stage("{depth: 1, stride: 2.0}"), "model.stages.0.stride", ["2.0", "write 2"]),
    ("float_range_on_int", with_stage("{depth: {float: [1, 2]}}"), "model.stages.0.depth.float",
     ["a float range", "integer"]),
    ("step_nan", with_train("{lr: {float: [0.1, 0.2], step: .nan}}"), "train.lr.step", ["nan", "finite"]),
    ("name_path", GOOD.replace("name: t", "name: ../../x"), "name", ["'../../x'", "must match"]),
    ("typo_required", "name: x\nmodel: {stagse: [{depth: 1}]}\n", "model.stagse", ["did you mean 'stages'"]),
    ("template_key_in_blocks", with_stage("{width: 64, block: {radix: 2}, blocks: [{type: split_attention}, "
                                          "{type: se}]}"), "model.stages.0.block.radix", ["'se'", "block 1"]),
    ("workers_on_sqlite", with_search("{workers: 2}"), "search.workers", ["2 workers", "SQLite"]),
    ("huge_width", with_stage("{depth: 1, width: 1000000000}"), "model.stages.0.width", ["too large", "<= 8192"]),
]

assert len(CASES) >= 30


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("name, text, path, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_spec(cli, tmp_path, name, text, path, needles):
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(textwrap.dedent(text))

    # The API names the exact field.
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    assert info.value.path == path, str(info.value)

    # The CLI: exit code 2, nothing on stdout, one line on stderr naming the path and the bad value.
    result = cli("validate", spec_file)
    assert result.code == 2, result
    assert result.out == ""
    line = one_line_error(result.err)
    if path:
        assert f"error: {path}: " in line, line
    else:
        assert str(spec_file) in line, line  # file-level problems name the file
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


def test_good_base_validates(cli, tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    result = cli("validate", f)
    assert result.code == 0, result
    assert "valid architecture 't'" in result.out


def test_missing_file(cli, tmp_path):
    missing = tmp_path / "nope" / "space.yaml"
    result = cli("validate", missing)
    assert result.code == 2
    line = one_line_error(result.err)
    assert str(missing) in line and "no such file" in line


def test_directory_instead_of_file(cli, tmp_path):
    result = cli("validate", tmp_path)
    assert result.code == 2
    line = one_line_error(result.err)
    assert str(tmp_path) in line and "directory" in line


@pytest.mark.parametrize("command", ["validate", "compile", "sample"])
def test_every_command_rejects_bad_specs(cli, tmp_path, command):
    f = tmp_path / "bad.yaml"
    f.write_text(with_stage("{depth: 1, block: {type: plain, radix: 2}}"))
    result = cli(command, f)
    assert result.code == 2, result
    assert "model.stages.0.block.radix" in one_line_error(result.err)


def test_compile_space_without_sample(cli):
    space = ROOT / "spaces" / "resnest.yaml"
    result = cli("compile", space)
    assert result.code == 2, result
    line = one_line_error(result.err)
    assert "model.stem.width" in line  # the first choice left, by its path
    assert "search space" in line and "--sample" in line


@pytest.mark.parametrize("text, needles", [
    ("name: x\nmodel:\n  stages: [{depth: 1}\n  foo: bar\n", ["YAML syntax error", "line 4", "column 3"]),
    (with_stage("{depht: 2}"), ["model.stages.0.depht", "did you mean 'depth'"]),
], ids=["yaml_syntax", "unknown_key"])
def test_subprocess_no_traceback(tmp_path, text, needles):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "search_space.cli", "validate", str(f)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    line = one_line_error(proc.stderr)
    for needle in needles:
        assert needle in line


# ------------------------------------------------------------------------------------------------------------
# Infeasible samples: a space whose choices sometimes combine into something that cannot be built
# ------------------------------------------------------------------------------------------------------------

SOMETIMES_INFEASIBLE = """\
name: sometimes
model:
  input_size: {choice: [2, 16]}     # at 2 px the second stride-2 stage would shrink a 1x1 map
  stem: {type: cifar, width: 16}
  stages:
    - depth: 1
      width: 32
      stride: 2
      block: {type: grouped, bottleneck_ratio: 0.25, cardinality: {choice: [1, 2, 3]}}  # 3 does not divide 8
    - {depth: 1, width: 32, stride: 2, block: {type: plain}}
train: {epochs: 1}
"""

NEVER_FEASIBLE = """\
name: never
model:
  input_size: 16
  stem: {type: cifar, width: 16}
  stages:
    - {depth: 1, width: 32, block: {type: grouped, bottleneck_ratio: 0.25, cardinality: {choice: [3, 5]}}}
"""


def test_sample_reports_infeasible_with_field_path():
    spec = parse_spec(yaml.safe_load(SOMETIMES_INFEASIBLE))
    assert not spec.is_fixed()
    paths, feasible = [], 0
    for seed in range(60):
        try:
            arch = sample(spec, RandomSuggester(seed))
        except InfeasibleSample as e:
            assert isinstance(e, SpecError)
            assert "\n" not in str(e)
            paths.append(e.path)
            continue
        feasible += 1
        assert arch.is_fixed()
        c = arch.model.stages[0].blocks[0].cardinality
        assert c in (1, 2) and arch.model.input_size == 16
        # The same draw without the check is the same architecture.
        assert sample(spec, RandomSuggester(seed), check=False) == arch
    assert feasible > 0
    assert set(paths) == {"model.stages.0.blocks.0.cardinality", "model.stages.1.stride"}, set(paths)
    # check=False hands back the impossible architecture instead of raising.
    for seed in range(60):
        try:
            sample(spec, RandomSuggester(seed))
        except InfeasibleSample:
            arch = sample(spec, RandomSuggester(seed), check=False)
            assert arch.is_fixed()
            break


def test_cli_sample_and_compile_skip_infeasible(cli, tmp_path):
    space = tmp_path / "sometimes.yaml"
    space.write_text(SOMETIMES_INFEASIBLE)
    outs = []
    for seed in (0, 1, 2, 3):
        first = cli("sample", space, "--seed", seed)
        again = cli("sample", space, "--seed", seed)
        assert first.code == 0 and again.code == 0, first
        assert first.out == again.out
        outs.append(first.out)
        arch = tmp_path / f"arch{seed}.yaml"
        arch.write_text(first.out)
        spec = load_spec(arch)
        assert spec.is_fixed() and spec.model.input_size == 16
        compiled = cli("compile", space, "--sample", "--seed", seed)
        assert compiled.code == 0, compiled
        from_file = cli("compile", arch)
        assert from_file.code == 0, from_file
        total = [l for l in compiled.out.splitlines() if l.startswith("total:")]
        assert total and total == [l for l in from_file.out.splitlines() if l.startswith("total:")]


def test_cli_sample_never_feasible(cli, tmp_path):
    space = tmp_path / "never.yaml"
    space.write_text(NEVER_FEASIBLE)
    for command in (("sample", space, "--seed", 0), ("compile", space, "--sample", "--seed", 0)):
        result = cli(*command)
        assert result.code == 2, result
        line = one_line_error(result.err)
        assert "model.stages.0.blocks.0.cardinality" in line and "infeasible" in line
