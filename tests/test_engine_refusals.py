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
