"""Issue 27, items 5, 7 and 8 on the Optuna engine and the command line: a stop inside a SQLite call never leaves
the study locked, a damaged study file and a full disk say one thing once, every flag is checked like a spec field,
a resumed study never mixes recipes, and a run directory belongs to one engine.

Tiny spaces on 8x8 digits with one epoch and one torch thread; nothing here starts Ray (see test_ray_safety.py)."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import event

import runners.search.storage as storage_module
from runners.common.progress import Progress
from runners.search.optuna_engine import SearchRun
from search_space.spec import load_spec
from test_search import LR_ONLY, one_thread, write_space  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(r) -> str:
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and "Traceback" not in r.err, r
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Item 5: a stop that lands inside a SQLite call
# ----------------------------------------------------------------------------------------------------------------


def test_a_stop_right_after_a_select_leaves_no_lock_and_the_trial_is_recorded(tmp_path, monkeypatch):
    """Ctrl-C lands in a storage read of the running trial (the pruner's look at the study after epoch 1): the
    interrupted trial is recorded and enqueued again at once, and another connection can write right after."""
    monkeypatch.setattr(storage_module, "SQLITE_BUSY_S", 3)  # a held lock would make the recording fail in 3 s
    path = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=2, train__lr=0.3,
                       search__pruner="median")
    out = tmp_path / "run"
    run = SearchRun(load_spec(path), out, Progress(stream=io.StringIO(), tty=False))
    study = run.open()
    engine = study._storage.engine if hasattr(study._storage, "engine") else study._storage._backend.engine
    armed = {"on": False}

    @event.listens_for(engine, "after_cursor_execute")
    def interrupt(conn, cursor, statement, params, context, executemany):
        if armed["on"] and statement.lstrip().upper().startswith("SELECT"):
            armed["on"] = False
            raise KeyboardInterrupt

    report = run.evaluator.evaluate

    def evaluate(number, trial, hooks, **kw):
        real = hooks.report

        def report_then_arm(epoch, metrics):
            armed["on"] = True  # the next SELECT (should_prune reads the study) is interrupted
            return real(epoch, metrics)

        hooks.report = report_then_arm
        return report(number, trial, hooks, **kw)

    monkeypatch.setattr(run.evaluator, "evaluate", evaluate)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run.run_one()
        assert time.monotonic() - start < 30
        db = sqlite3.connect(out / "study.db", timeout=1)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE studies SET study_name = study_name")
        db.commit()
        db.close()
    finally:
        run.close()
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}").trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["status"] == "interrupted"
    assert trials[1].state == optuna.trial.TrialState.WAITING  # enqueued again


def damage_pages(db: Path, *pages: int) -> None:
    """Overwrite whole SQLite pages (1-based, 4096 bytes) with a pattern no page holds."""
    with open(db, "r+b") as f:
        for page in pages:
            f.seek(4096 * (page - 1))
            f.write(b"\xde\xad\xbe\xef" * 1024)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-trial study (module-wide: several tests copy it)."""
    from search_space.cli import main

    tmp = tmp_path_factory.mktemp("finished")
    path = write_space(tmp, LR_ONLY, search__trials=2, train__epochs=1)
    assert main(["run", str(path), "--out", str(tmp / "run")]) == 0
    return path, tmp / "run"


def test_a_damaged_study_file_gives_one_line_from_run_and_show(finished_run, cli):
    path, out = finished_run
    db = out / "study.db"
    pristine = db.read_bytes()
    tables = dict(sqlite3.connect(db).execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
    try:
        for page in (tables["trials"], tables["trial_values"], 2):
            db.write_bytes(pristine)
            damage_pages(db, page)
            for args in (("show", out), ("run", path, "--out", out, "--trials", "3")):
                line = one_line(cli(*args))
                assert "damaged" in line and "restore it from a copy" in line and str(db) in line, (page, line)
    finally:
        db.write_bytes(pristine)
    assert cli("show", out).code == 0


def test_a_study_damaged_during_the_search_ends_with_one_line(tmp_path, cli, monkeypatch):
    """A bad page met mid-search (after the opening check): SQLite's words, once, without Optuna's misleading
    'invalid data in the commit'."""
    import runners.search.optuna_engine as engine_module

    path, out = write_space(tmp_path, LR_ONLY, search__trials=2, train__epochs=1), tmp_path / "run"
    real = engine_module.trial_counts
    calls = {"n": 0}

    def malformed(study):
        calls["n"] += 1
        if calls["n"] == 2:
            try:
                raise sqlite3.DatabaseError("database disk image is malformed")
            except sqlite3.DatabaseError as e:
                raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e
        return real(study)

    monkeypatch.setattr(engine_module, "trial_counts", malformed)
    r = cli("run", path, "--out", out)
    errors = [x for x in r.err.splitlines() if x.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and "Traceback" not in r.err, r
    line = errors[0]
    assert "search.storage" in line and "damaged (database disk image is malformed)" in line, line
    assert "invalid data" not in line


def test_a_read_only_run_directory_says_one_thing_once_with_advice_that_works(tmp_path, cli, monkeypatch):
    import errno

    path, out = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=1), tmp_path / "run"
    real = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.name.startswith(".write-test"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    line = one_line(cli("run", path, "--out", out))
    assert line.count("cannot write") == 1 and line.count("error") == 1, line
    assert "Read-only file system" in line and "free space" not in line, line


def test_write_advice_fits_the_failure(tmp_path):
    from runners.search.optuna_engine import write_advice

    assert "free space" in write_advice("cannot write the study: database or disk is full", tmp_path)
    for why in ("cannot write the study: attempt to write a readonly database",
                "cannot write x: Read-only file system", "cannot write x: Permission denied"):
        advice = write_advice(why, tmp_path)
        assert "writable" in advice and "free space" not in advice, why


# ----------------------------------------------------------------------------------------------------------------
# Item 7: storage flags
# ----------------------------------------------------------------------------------------------------------------


def test_storage_paths_under_an_impossible_directory_are_refused(tmp_path, cli):
    (tmp_path / "file").write_text("x")
    path = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=1)
    for storage in (f"sqlite:///{tmp_path}/file/x.db", f"journal:{tmp_path}/file/j.log", "sqlite:////proc/none/x.db",
                    "journal:/proc/none/j.log"):
        line = one_line(cli("run", path, "--out", tmp_path / "run", "--storage", storage))
        assert "search.storage" in line and "cannot make the directory" in line, (storage, line)


def test_a_journal_file_of_garbage_is_refused(tmp_path, cli):
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(bytes(range(256)) * 40)
    text = tmp_path / "text.log"
    text.write_text("not json at all\n{\"op_code\": \n")
    path = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=1)
    for journal in (garbage, text):
        line = one_line(cli("run", path, "--out", tmp_path / "run", "--storage", f"journal:{journal}"))
        assert "is not an Optuna journal file" in line, line


def test_an_sqlite_file_that_is_not_an_optuna_study_is_refused_and_left_alone(tmp_path, cli):
    users = tmp_path / "users.db"
    db = sqlite3.connect(users)
    db.execute("CREATE TABLE people (name TEXT)")
    db.execute("INSERT INTO people VALUES ('ann')")
    db.commit()
    db.close()
    before = users.read_bytes()
    notdb = tmp_path / "notes.db"
    notdb.write_text("these are my notes, not a database\n" * 50)
    path = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=1)
    line = one_line(cli("run", path, "--out", tmp_path / "run", "--storage", f"sqlite:///{users}"))
    assert "no Optuna study" in line and "give a new file" in line, line
    assert users.read_bytes() == before  # no table of Optuna's was added
    line = one_line(cli("run", path, "--out", tmp_path / "run2", "--storage", f"sqlite:///{notdb}"))
    assert "not a SQLite database" in line, line


@pytest.mark.parametrize("args,flag", [
    (["--workers", "100000"], "--workers"), (["--workers", "0"], "--workers"), (["--n", "100000"], "--n"),
    (["--n", "2"], "--n"), (["--factor", "1000000000"], "--factor"), (["--factor", "1"], "--factor"),
    (["--seeds", "1000"], "--seeds"), (["--seeds", "0"], "--seeds"), (["--top-k", "0"], "--top-k"),
    (["--top-k", "100000"], "--top-k"), (["--threads", "0"], "--threads"), (["--threads", "100000"], "--threads"),
    (["--image-size", "0"], "--image-size"), (["--image-size", "100000"], "--image-size"),
])
def test_fidelity_flags_are_bounded(tmp_path, cli, args, flag):
    path = write_space(tmp_path, LR_ONLY, train__epochs=1)
    line = one_line(cli("fidelity", path, "--out", tmp_path / "audit", *args))
    assert line.startswith(f"error: {flag}:"), line
    assert not (tmp_path / "audit").exists() or not any((tmp_path / "audit").rglob("*.json"))


def test_run_threads_are_bounded_by_the_cores(tmp_path, cli):
    path = write_space(tmp_path, LR_ONLY, train__epochs=1)
    line = one_line(cli("run", path, "--out", tmp_path / "run", "--threads", "100000"))
    assert "--threads" in line and "cores" in line


# ----------------------------------------------------------------------------------------------------------------
# Item 8: one recipe per study, one engine per run directory
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--epochs", "2"], "train.epochs 1 -> 2"), (["--dataset", "digits_hard"], "train.dataset"),
    (["--objectives", "val_accuracy,params"], "search.objectives"),
])
def test_a_resumed_study_refuses_another_recipe(finished_run, cli, args, needle):
    path, out = finished_run
    before = (out / "study.db").read_bytes()
    line = one_line(cli("run", path, "--out", out, "--trials", "3", *args))
    assert needle in line and "another recipe" in line and "--out" in line and "--continue-anyway" in line, line
    assert (out / "study.db").read_bytes() == before


def test_a_changed_space_or_budget_is_another_recipe_and_continue_anyway_resumes(finished_run, cli, tmp_path):
    import shutil

    path, out = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    info = json.loads((copy / "run.json").read_text())
    info["storage"] = f"sqlite:///{copy / 'study.db'}"
    (copy / "run.json").write_text(json.dumps(info))
    spec = path.read_text()
    changed = tmp_path / "space.yaml"
    changed.write_text(spec.replace("width: 16", "width: 24"))
    line = one_line(cli("run", changed, "--out", copy, "--trials", "3"))
    assert "model.stages" in line and "another recipe" in line, line
    budget = write_space(tmp_path, LR_ONLY, search__trials=2, train__epochs=1, search__max_params=1.0e5)
    line = one_line(cli("run", budget, "--out", copy, "--trials", "3"))
    assert "search.max_params" in line, line
    r = cli("run", budget, "--out", copy, "--trials", "3", "--continue-anyway")
    assert r.code == 0 and "continuing the study" in r.err and "search.max_params" in r.err, r
    recipe = json.loads((copy / "run.json").read_text())["recipe"]
    assert recipe["search"]["max_params"] == 1.0e5  # the rerun's recipe is what a later run compares with


def test_speed_settings_may_change_on_resume(finished_run, cli):
    path, out = finished_run
    r = cli("run", path, "--out", out, "--device", "cpu", "--threads", "1")
    assert r.code == 0, r


def test_a_run_directory_belongs_to_one_engine(finished_run, cli, tmp_path):
    path, out = finished_run
    line = one_line(cli("run", path, "--out", out, "--backend", "ray"))
    assert "--backend" in line and "optuna engine" in line and "its own --out" in line, line
    ray_dir = tmp_path / "ray_run"
    (ray_dir / "ray").mkdir(parents=True)
    (ray_dir / "run.json").write_text(json.dumps({"name": "tiny", "backend": "ray"}))
    line = one_line(cli("run", path, "--out", ray_dir))
    assert "ray engine" in line and "its own --out" in line, line
    (ray_dir / "run.json").unlink()  # the experiment alone tells it too
    line = one_line(cli("run", path, "--out", ray_dir))
    assert "ray engine" in line, line


def test_a_damaged_run_json_is_refused_before_resuming(tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{" * 100_000)
    line = one_line(cli("run", write_space(tmp_path, LR_ONLY, train__epochs=1), "--out", out))
    assert "run.json" in line and "damaged" in line, line


def test_a_full_disk_at_the_start_advises_room_not_another_out(tmp_path, cli, monkeypatch):
    import errno

    path, out = write_space(tmp_path, LR_ONLY, search__trials=1, train__epochs=1), tmp_path / "run"
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".write-test"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    line = one_line(cli("run", path, "--out", out))
    assert line.count("cannot write") == 1 and "free space" in line and "writable --out" not in line, line
