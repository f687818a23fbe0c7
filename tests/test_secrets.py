"""A storage password is never shown or stored (issue 27 item 2): a table of storage URL shapes (a wrong password
against a real PostgreSQL server, nothing listening, a port that is no number, an unknown scheme, a missing
driver, ``?password=``, a percent-encoded password) crossed with the commands that take or read one (``validate``
with the URL in the spec, ``run --storage``, ``show`` and ``report`` on a run.json that holds it), grepping every
line printed and every file written for the secret; and real searches on PostgreSQL (password in the user part
and in the query string) whose every output and file is grepped the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from search_space.cli import main
from search_space.schema import redact

from conftest import write_space
from test_postgres import free_port, postgres  # noqa: F401 - the real PostgreSQL 15 fixture
from test_run_dir import fake_run

pytestmark = pytest.mark.usefixtures("single_thread")

SECRET = "Pw-5ecret-7"
ENCODED = "Pw%2D5ecret%2D7"  # the same password percent-encoded: a driver may echo it decoded


def shapes(server: str) -> dict:
    """URL shape -> storage URL carrying SECRET. ``server`` is the fixture's host:port (a real server)."""
    closed = f"127.0.0.1:{free_port()}"
    return {
        "auth failure": f"postgresql://nas:{SECRET}@{server}/postgres",
        "nothing listening": f"postgresql://nas:{SECRET}@{closed}/postgres",
        "port not a number": f"postgresql://nas:{SECRET}@127.0.0.1:notaport/postgres",
        "unknown scheme": f"postgresqlx://nas:{SECRET}@{server}/postgres",
        "driver missing (mysql)": f"mysql://nas:{SECRET}@127.0.0.1/db",
        "driver missing (psycopg2)": f"postgresql+psycopg2://nas:{SECRET}@{server}/postgres",
        "query password": f"postgresql://nas@{server}/postgres?sslmode=disable&password={SECRET}",
        "percent-encoded": f"postgresql://nas:{ENCODED}@{server}/postgres",
        "bracketed host": f"postgresql://nas:{SECRET}@[::1/postgres",
    }


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in (SECRET, ENCODED, "5ecret") if s.encode() in data]


def written(root: Path, skip: tuple = ()) -> dict:
    """Every file under ``root`` (HTML, PNGs, JSON, YAML, SQLite ...) -> the secrets it holds."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in skip:
            hit = leaks(path.read_bytes())
            if hit:
                found[str(path.relative_to(root))] = hit
    return found


def server_of(url: str) -> str:
    return url.split("@", 1)[1].split("/", 1)[0]


# the report opens no storage (it reads only the run directory), so its row only confirms that; slow: a report
# per shape; the real searches below write a report on the fast path
COMMANDS = ["validate", "run", "show", pytest.param("report", marks=pytest.mark.slow)]


def test_redact_covers_every_shape():
    for url in shapes("127.0.0.1:5432").values():
        assert not leaks(redact(url)), url
        assert not leaks(redact(f"error: cannot open '{url}' (reason)")), url


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_shows_or_stores_a_password(postgres, tmp_path, capsys, monkeypatch, command):  # noqa: F811
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.chdir(tmp_path)
    table = shapes(server_of(postgres))
    failures = {}
    for shape, url in table.items():
        root = tmp_path / shape.replace(" ", "_").replace("(", "").replace(")", "")
        root.mkdir()
        space = write_space(root, search__trials=1, train__epochs=1)
        skip = ()
        if command == "validate":
            data = yaml.safe_load(space.read_text())
            data["search"]["storage"] = url
            space.write_text(yaml.safe_dump(data))
            skip = (space,)  # the user's own file holds it
            codes = [main(["validate", str(space)])]
            with pytest.raises(SystemExit) as e:  # validate takes no --storage: argparse echoes the arguments
                main(["validate", str(space), "--storage", url])
            codes.append(e.value.code)
        elif command == "run":
            codes = [main(["run", str(space), "--out", str(root / "run"), "--storage", url, "--trials", "1"])]
        else:
            run = fake_run(root / "r", n=2, backend="optuna")
            info = json.loads((run / "run.json").read_text())
            (run / "run.json").write_text(json.dumps({**info, "storage": url, "study_name": "s"}))
            skip = (run / "run.json",)  # the hostile input itself
            codes = [main([command, str(run)])]
        out = capsys.readouterr()
        hits = leaks(out.out + out.err)
        files = written(root, skip)
        if hits or files:
            failures[shape] = (hits, files, out.err[-300:])
        assert all(c in (0, 2) for c in codes), (shape, codes, out.err[-2000:])
    assert not failures, failures


@pytest.mark.parametrize("shape", ["user part", "query string"])
def test_a_real_search_on_postgres_keeps_no_password(postgres, tmp_path, capsys, monkeypatch, shape):  # noqa: F811
    """The password that works: every line of run, show and report, and every file they write, is free of it."""
    password = postgres.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    server = server_of(postgres)
    url = postgres if shape == "user part" else f"postgresql://nas@{server}/postgres?password={password}"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    space = write_space(tmp_path, search__trials=1, train__epochs=1)
    out_dir = tmp_path / "run"
    name = f"secret_{shape.split()[0]}"
    assert main(["run", str(space), "--out", str(out_dir), "--storage", url, "--study-name", name]) == 0
    printed = capsys.readouterr()
    assert password not in printed.out + printed.err
    assert "***" in printed.err  # the header names the storage, masked
    info = json.loads((out_dir / "run.json").read_text())
    assert password not in info["storage"] and "password" not in info["storage"]
    monkeypatch.setenv("PGPASSWORD", password)  # how show reads it back (libpq), as the docs say
    assert main(["show", str(out_dir)]) == 0
    assert main(["report", str(out_dir)]) == 0
    printed = capsys.readouterr()
    assert password not in printed.out + printed.err and "1/1 trials" in printed.out
    for path in out_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    # the run keeps a copy of its spec for the report (which embeds only files of its run directory)
    assert (out_dir / "report.html").exists() and (out_dir / "spec.yaml").read_text() == space.read_text()
