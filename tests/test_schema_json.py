"""The JSON Schema of the spec format: valid, current, accepts every shipped spec, rejects bad ones."""

import glob
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from search_space.cli import main
from search_space.json_schema import render, spec_json_schema

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(glob.glob(str(ROOT / "spaces" / "*.yaml")) + glob.glob(str(ROOT / "spaces" / "zoo" / "*.yaml")))


@pytest.fixture(scope="module")
def validator():
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_command_output(capsys):
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == spec_json_schema()
    assert (ROOT / "spaces" / "spec.schema.json").read_text() == out == render(), \
        "regenerate it: search schema > spaces/spec.schema.json"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: Path(p).name)
def test_shipped_specs_validate_and_point_at_the_schema(validator, path):
    text = Path(path).read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (Path(path).parent / first.split("$schema=", 1)[1]).resolve()
    assert target == (ROOT / "spaces" / "spec.schema.json").resolve()
    errors = list(validator.iter_errors(yaml.safe_load(text)))
    assert not errors, [e.message for e in errors]


def _resnest():
    return yaml.safe_load((ROOT / "spaces" / "resnest.yaml").read_text())


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["model"]["stages"][0]["block"].update(cardinalty=2), "cardinalty"),      # unknown key
    (lambda d: d["model"]["stages"][0]["block"].update(type="resnext"), "type"),          # unknown block type
    (lambda d: d["model"]["stages"][0]["block"].update(type={"choice": ["plain", "skk"]}), "type"),
    (lambda d: d["model"].update(downsample="max"), "downsample"),                      # enum
    (lambda d: d["model"]["stages"][0].update(depth=0), "depth"),                       # below min
    (lambda d: d["model"]["stages"][0].update(depth={"int": [1]}), "depth"),            # bad int range
    (lambda d: d["model"]["stages"][0].update(stride=3), "stride"),
    (lambda d: d["train"].update(lr={"float": [0.1, 0.2], "logg": True}), "lr"),        # unknown choice key
    (lambda d: d["search"].update(trials={"int": [1, 4]}), "trials"),                   # search is fixed
    (lambda d: d.pop("model"), "model"),                                                # model missing
    (lambda d: d["model"].update(stages=[]), "stages"),
    (lambda d: d["model"].update(head={"dropout": 1.5}), "dropout"),
])
def test_bad_specs_are_rejected(validator, edit, where):
    data = _resnest()
    assert not list(validator.iter_errors(data))
    edit(data)
    errors = list(validator.iter_errors(data))
    assert errors
    assert any(where in json.dumps(list(e.absolute_path) + [e.message]) for e in errors) or where == "model"


def test_choices_of_numbers_validate(validator):
    data = _resnest()
    data["model"]["stages"][0]["width"] = {"choice": [32, 64]}
    data["train"]["lr"] = {"float": [0.01, 0.3], "log": True}
    data["model"]["stages"][0]["depth"] = {"int": [1, 4], "step": 1}
    assert not list(validator.iter_errors(data))
    data["model"]["stages"][0]["width"] = {"choice": ["wide"]}
    assert list(validator.iter_errors(data))
