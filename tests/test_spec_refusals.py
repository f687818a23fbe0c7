"""Issue 27, item 9 and part of item 3: specs `search validate` used to accept although nothing useful could come of
them (a stepped range that offers one value, a space none of whose samples can be built, synthetic data split to
nothing), and files given by mistake as a spec or warm start, whose content an error must never echo."""

from __future__ import annotations

import json

import pytest
import torch

from search_space.config import TrainConfig, _taken, check_splits, synthetic_rows
from search_space.schema import SpecError
from search_space.spec import load_spec

ARCH = """\
name: t
model:
  input_size: 8
  stem: {type: cifar, width: 16}
  stages:
    - depth: DEPTH
      width: 64
      stride: 1
      block: BLOCK
train: TRAIN
"""


def spec(tmp_path, depth="1", block="{type: plain}", train="{dataset: digits, epochs: 1}", name="s.yaml"):
    path = tmp_path / name
    path.write_text(ARCH.replace("DEPTH", depth).replace("BLOCK", block).replace("TRAIN", train))
    return path


def refused(cli, path) -> str:
    r = cli("validate", path)
    assert r.code == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1, r
    return r.err.strip()


@pytest.mark.parametrize("depth,field", [("{int: [1, 3], step: 5}", "depth.step"),
                                         ("{int: [1, 3], step: 3}", "depth.step")])
def test_a_stepped_int_range_whose_step_exceeds_the_range_is_refused(cli, tmp_path, depth, field):
    line = refused(cli, spec(tmp_path, depth=depth))
    assert f"model.stages.0.{field}" in line and "offers only 1" in line and "at most 2" in line


def test_steps_that_fit_and_single_value_ranges_still_validate(cli, tmp_path):
    for depth in ("{int: [1, 3], step: 2}", "{int: [2, 2], step: 4}", "{int: [1, 3]}"):
        r = cli("validate", spec(tmp_path, depth=depth))
        assert r.code == 0, (depth, r)


def test_a_space_none_of_whose_samples_can_be_built_is_refused_by_validate_and_run(cli, tmp_path):
    """Cardinalities 3 and 5 divide none of the 3x3 widths the stage offers: every trial would be infeasible."""
    path = spec(tmp_path, block="{type: grouped, cardinality: {choice: [3, 5]}, bottleneck_ratio: 0.25}")
    line = refused(cli, path)
    assert "cardinality" in line and "no architecture of this space can be built" in line and "divide" in line
    r = cli("run", path, "--out", tmp_path / "run")
    assert r.code == 2 and "no architecture of this space can be built" in r.err and not (tmp_path / "run").exists()


def test_a_space_with_one_impossible_option_among_feasible_ones_validates(cli, tmp_path):
    """Only part of the space is impossible: its trials are recorded as infeasible and the rest is searched."""
    path = spec(tmp_path, block="{type: grouped, cardinality: {choice: [3, 4]}, bottleneck_ratio: 0.25}")
    r = cli("validate", path)
    assert r.code == 0 and "valid search space" in r.out, r


def test_synthetic_data_split_to_nothing_is_refused(cli, tmp_path):
    line = refused(cli, spec(tmp_path, train="{dataset: synthetic, synthetic_samples: 20, synthetic_classes: 10}"))
    assert "train.synthetic_samples" in line and "no validation rows" in line
    line = refused(cli, spec(tmp_path, train="{dataset: synthetic, synthetic_samples: 10, synthetic_classes: 10, "
                                             "train_fraction: 0.2}"))
    assert "no training rows" in line
    r = cli("validate", spec(tmp_path, train="{dataset: synthetic, synthetic_samples: 30, synthetic_classes: 10}"))
    assert r.code == 0, r


@pytest.mark.parametrize("samples,classes,test,val,train", [
    (20, 10, 0.2, 0.15, 1.0), (30, 10, 0.2, 0.15, 1.0), (40, 10, 0.2, 0.15, 0.2), (31, 7, 0.9, 0.9, 0.01),
    (512, 10, 0.2, 0.15, 0.01), (5, 10, 0.2, 0.15, 1.0), (100, 3, 0.5, 0.5, 0.3), (23, 4, 0.01, 0.01, 0.01)])
def test_validate_counts_the_synthetic_rows_as_the_data_loader_splits_them(samples, classes, test, val, train):
    """The spec-side arithmetic is the loader's rule: checked against the real split of the real dataset."""
    from runners.training.data import load_dataset

    config = TrainConfig(dataset="synthetic", synthetic_samples=samples, synthetic_classes=classes,
                         test_fraction=test, val_fraction=val, train_fraction=train, synthetic_channels=1)
    rows, val_rows = synthetic_rows(config)
    if rows == 0 or val_rows == 0:  # refused before the loader is asked
        with pytest.raises(SpecError, match="train.synthetic_samples"):
            check_splits(config)
        return
    data = load_dataset(config, image_size=4)
    assert (len(data.train_y), len(data.val_y)) == (rows, val_rows)


def test_the_split_rule_matches_the_loaders(tmp_path):
    from runners.training.data import stratified_split

    for count in range(0, 12):
        for fraction in (0.01, 0.2, 0.5, 0.9, 1.0):
            labels = torch.zeros(count, dtype=torch.int64)
            _, taken = stratified_split(labels, fraction, 0) if count else (None, [])
            assert len(taken) == _taken(count, fraction), (count, fraction)


@pytest.mark.parametrize("dataset", ["digits", "digits_hard"])
def test_extreme_fractions_still_leave_rows_on_fixed_datasets(dataset):
    """Why validate accepts every in-range fraction on the fixed datasets: each split keeps rows of every class."""
    from runners.training.data import load_dataset

    config = TrainConfig(dataset=dataset, test_fraction=0.9, val_fraction=0.9, train_fraction=0.01)
    data = load_dataset(config, image_size=8)
    assert len(data.train_y) >= data.num_classes and len(data.val_y) >= data.num_classes


SECRET = "hunter2-S3CR3T"
FILES = {
    "env.yaml": f"password: {SECRET}\napi_key: {SECRET}\n",
    "config.json": json.dumps({"token": SECRET, "auths": {"registry": {"auth": SECRET}}}),
    "dup.yaml": f"{SECRET}: 1\n{SECRET}: 2\n",
    "nested.yaml": f"credentials:\n  {SECRET}:\n    - {{a: 1, a: 2}}\n",
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_file_given_by_mistake_is_refused_without_echoing_its_content(cli, tmp_path, name):
    path = tmp_path / name
    path.write_text(FILES[name])
    line = refused(cli, path)
    assert SECRET not in line and "password" not in line and "token" not in line, line
    # the same file as a warm start of a good space
    space = spec(tmp_path, name="space.yaml", train="{dataset: digits, epochs: 1}").read_text()
    (tmp_path / "space.yaml").write_text(space + f"search: {{warm_start: [{name}]}}\n")
    for command in ("validate", "run"):
        r = cli(command, tmp_path / "space.yaml", *(["--out", tmp_path / "run"] if command == "run" else []))
        assert r.code == 2 and SECRET not in r.err + r.out and "search.warm_start.0" in r.err, r


def test_a_misspelt_spec_key_is_still_named(tmp_path):
    with pytest.raises(SpecError, match="did you mean 'train'"):
        load_spec("name: t\ntrian: {}\n")
    with pytest.raises(SpecError, match="nmae: unknown key; did you mean 'name'"):
        load_spec("nmae: t\nmodel: {}\n")
