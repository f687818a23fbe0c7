"""The documentation: generated references are up to date, the README is a front door that names the test and
main commands, and the MkDocs site builds with ``--strict`` (broken links and references fail)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from search_space.docs import generated_files

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


@pytest.mark.parametrize("path", sorted(generated_files()), ids=lambda p: p.name)
def test_generated_files_match_the_code(path):
    assert path.read_text() == generated_files()[path], \
        f"{path.relative_to(ROOT)} is stale: run `python -m search_space.docs`"


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "python -m pytest -q" in text
    assert "search run spaces/resnest.yaml" in text


def test_readme_and_docs_link_only_to_files_that_exist():
    """Relative links of the README (outside the docs site, so mkdocs does not check them)."""
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_ci_script_runs_the_readme_test_command():
    assert "python -m pytest -q" in README.read_text()
    assert "-m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_docs_site_builds_strict(tmp_path):
    """Needs the docs extra (``pip install -e ".[docs]"``), which CI installs."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "create_model" in api  # mkdocstrings rendered the docstrings


def documented_commands(kinds=("validate", "compile", "sample", "schema")) -> list[str]:
    """``search <kind> ...`` lines of the bash blocks of the README and every docs page (comments and
    redirections dropped), so the quick commands a reader copies are run as written."""
    found = set()
    for path in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("#")[0].split(">")[0].strip()
                if line.startswith("search ") and line.split()[1] in kinds:
                    found.add(line)
    return sorted(found)


@pytest.mark.parametrize("line", documented_commands())
def test_documented_quick_commands_run_as_written(line, cli, tmp_path, monkeypatch):
    import shlex

    monkeypatch.chdir(ROOT)
    args = shlex.split(line)[1:]
    if "-o" in args:  # write into the test's folder, not the checkout
        args[args.index("-o") + 1] = str(tmp_path / Path(args[args.index("-o") + 1]).name)
    result = cli(*args)
    assert result.code == 0, result
