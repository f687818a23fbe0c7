"""The ``search`` command: validate, compile (with --sample), sample -o, and argparse errors (exit code 2)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, SPACES, ZOO
from search_space.cli import sample_feasible
from search_space.cost import architecture_cost
from search_space.spec import load_spec

pytestmark = pytest.mark.usefixtures("single_thread")

RESNEST = ROOT / "spaces" / "resnest.yaml"


def parse_int(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("path", SPACES + ZOO, ids=[p.stem for p in SPACES + ZOO])
def test_validate_shipped_files(cli, path):
    result = cli("validate", path)
    assert result.code == 0, result
    assert result.err == ""
    spec = load_spec(path)
    if spec.is_fixed():
        cost = architecture_cost(spec.model)
        assert f"valid architecture '{spec.name}': {cost.params:,} parameters" in result.out
    else:
        assert f"valid search space '{spec.name}'" in result.out
        assert "choice(s)" in result.out


def table(out: str) -> tuple[dict[str, list[str]], re.Match]:
    lines = out.splitlines()
    rows = {}
    for line in lines:
        m = re.match(r"^(stem|stage \d+|head)\s+(.*)$", line)
        if m:
            rows[m[1]] = m[2].split()
    total = next(re.match(r"^total: ([\d,]+) parameters, ([\d.]+) (G|M)MACs, output \((\d+), (\d+)\)$", l)
                 for l in lines if l.startswith("total:"))
    assert total, out
    return rows, total


def test_compile_sample_seed_table(cli):
    result = cli("compile", RESNEST, "--sample", "--seed", 3)
    assert result.code == 0, result
    rows, total = table(result.out)
    arch = sample_feasible(load_spec(RESNEST), 3)
    cost = architecture_cost(arch.model)
    assert parse_int(total[1]) == cost.params
    assert float(total[2]) * (1e6 if total[3] == "M" else 1e9) == pytest.approx(cost.macs, rel=0.01)
    assert (int(total[4]), int(total[5])) == (1, 1000)
    # One row per stage (plus stem and head), each with its params; the rows add up to the total.
    n_stages = len(arch.model.stages)
    assert list(rows) == ["stem"] + [f"stage {i}" for i in range(n_stages)] + ["head"]
    row_params = [parse_int(r[3]) for r in rows.values()]  # blocks, types, width, params, MACs, unit, output
    assert row_params == [r.params for r in cost.rows]
    assert sum(row_params) == cost.params
    for i, stage in enumerate(arch.model.stages):
        r = rows[f"stage {i}"]
        assert int(r[0]) == len(stage.blocks)
        assert set(r[1].split(",")) == {b.type for b in stage.blocks}
        assert int(r[2]) == stage.width
    assert rows["head"][-1] == "1000x1x1"
    # The same seed prints the same table.
    assert cli("compile", RESNEST, "--sample", "--seed", 3).out == result.out


def test_compile_overrides_and_output(cli, tmp_path):
    out = tmp_path / "arch.yaml"
    result = cli("compile", RESNEST, "--sample", "--seed", 5, "--in-channels", 1, "--num-classes", 10,
                 "--input-size", 8, "-o", out)
    assert result.code == 0, result
    assert "input 1x8x8" in result.out
    _, total = table(result.out)
    arch = sample_feasible(load_spec(RESNEST), 5)
    assert parse_int(total[1]) == architecture_cost(arch.model, in_channels=1, num_classes=10).params
    assert (int(total[4]), int(total[5])) == (1, 10)
    assert load_spec(out) == arch


def test_sample_output_file(cli, tmp_path):
    target = tmp_path / "tmp" / "arch.yaml"
    first = cli("sample", RESNEST, "--seed", 1, "-o", target)
    assert first.code == 0, first
    assert first.out == "" and str(target) in first.err
    text = target.read_text()
    again = cli("sample", RESNEST, "--seed", 1, "-o", target)
    assert again.code == 0 and target.read_text() == text
    other = cli("sample", RESNEST, "--seed", 2)
    assert other.code == 0 and other.out != text
    # Without -o it goes to stdout, byte for byte the same.
    assert cli("sample", RESNEST, "--seed", 1).out == text

    arch = load_spec(target)
    assert arch.is_fixed() and arch == sample_feasible(load_spec(RESNEST), 1)
    assert cli("validate", target).code == 0
    compiled = cli("compile", target)
    assert compiled.code == 0, compiled
    _, total = table(compiled.out)
    assert parse_int(total[1]) == architecture_cost(arch.model).params
    # `compile --sample --seed 1` on the space builds the very same architecture.
    _, from_space = table(cli("compile", RESNEST, "--sample", "--seed", 1).out)
    assert from_space[0] == total[0]


@pytest.mark.parametrize("argv", [
    ["validate", "spaces/resnet.yaml", "--bogus"],
    ["compile", "spaces/resnet.yaml", "--seed", "abc"],
    ["sample"],
    ["frobnicate"],
    [],
], ids=["unknown_flag", "bad_int", "missing_arg", "unknown_command", "no_command"])
def test_argparse_errors_exit_2(cli, argv):
    result = cli(*argv)
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err


def test_help_exits_0(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("validate", "compile", "sample"):
        assert command in result.out
