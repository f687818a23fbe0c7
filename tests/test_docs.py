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


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_fences_are_closed(path):
    """An unclosed fence swallows the prose after it into a code block (and pairs the later fences wrongly)."""
    fences = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0, f"{path.relative_to(ROOT)}: a code fence is not closed (fences at lines {fences})"


def test_no_merge_conflict_markers():
    """A merge left half-resolved renders as garbage (and a fence it splits hides the prose after it)."""
    marker = re.compile(r"^(<{7}|={7}|>{7})( |$)", flags=re.M)
    files = [p for p in ROOT.rglob("*") if p.suffix in {".md", ".py", ".yaml", ".yml", ".toml", ".cfg"}
             and p.is_file() and not {".git", ".venv", "site", "runs", "node_modules"} & set(p.parts)]
    found = [f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}" for p in files
             for text in [p.read_text(errors="replace")] for m in marker.finditer(text)]
    assert not found, found


def test_raw_records_the_docs_name_exist():
    """Every figure's raw record is kept in the repo: each ``docs/results/...`` file a page names is there."""
    named = {(path, m) for path in pages() for m in re.findall(r"docs/results/[\w./-]+\.jsonl?", path.read_text())
             if "DATE" not in m}
    assert named, "no page names a raw record"
    missing = sorted(f"{path.relative_to(ROOT)}: {m}" for path, m in named if not (ROOT / m).is_file())
    assert not missing, missing


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
    for path in pages():
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
