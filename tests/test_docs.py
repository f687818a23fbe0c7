"""The README's spec reference is generated from the spec dataclasses; it must be up to date."""

from pathlib import Path

from search_space.docs import render_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_reference_matches_the_code():
    text = README.read_text()
    assert render_readme(text) == text, "README spec reference is stale: run `python -m search_space.docs`"


def test_readme_names_the_test_command_and_main_command():
    text = README.read_text()
    assert "python -m pytest -q" in text
    assert "search run spaces/resnest.yaml" in text
