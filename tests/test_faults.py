"""Faults during a search (issue 10): kills at random moments, lost and unclaimed trials, signals, workers whose
parent dies, files that disagree with the study, a vanished study, a second process on a SQLite study, bad data
found before the study starts, errors while sampling or writing, a full disk, out-of-memory, a cost objective with
a pruner, seeds on a journal file, password masking and warmup-aware pruning in the shipped spaces.

Tiny spaces on 8x8 digits, one or two epochs, one torch thread (see tests/test_search.py).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import runners.search.optuna_engine as engine
import runners.search.trial as trial_core
from runners.search.optuna_engine import make_pruner
from runners.search.records import records_from_study, trial_counts
from runners.search.rules import max_epochs, warmup_end
from runners.search.records import ranked
from runners.search.storage import RunLock, _process_started, masked, process_alive, storage_url, without_password
from runners.training.device import is_oom
from search_space.schema import SpecError
from search_space.spec import load_spec
from test_search import ENV, LR_ONLY, ROOT, command, load, one_thread, run, wait_for, write_space  # noqa: F401

HOST = socket.gethostname()


def sqlite(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def metrics(out: Path, number: int) -> dict:
    return json.loads((out / "trials" / str(number) / "metrics.json").read_text())


def check_files_agree(study: optuna.Study, out: Path) -> None:
    """Every finished trial has a metrics.json that says what the study says."""
    for t in study.trials:
        assert t.state != TrialState.RUNNING, t.number
        if t.state == TrialState.WAITING:  # a retry the study no longer needs (it reached --trials)
            continue
        m = metrics(out, t.number)
        assert m["state"] == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name], t.number
        if t.state == TrialState.COMPLETE:
            assert list(m["values"].values()) == t.values
        assert not (out / "trials" / str(t.number) / "metrics.pending.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# 1. Stuck RUNNING trials
# ----------------------------------------------------------------------------------------------------------------


def test_unclaimed_running_trials_are_retried_and_the_study_finishes(tmp_path):
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    out.mkdir()
    study = optuna.create_study(study_name="tiny", storage=sqlite(out), direction="maximize")
    study.ask()  # created, then its process died before it claimed the trial
    # a retried trial popped from the queue still carries its predecessor's claim (another trial number)
    study.enqueue_trial({"train.lr": 0.2}, user_attrs={"worker_info": {"host": HOST, "pid": 1, "trial": 99}})
    study.ask()
    summary, log = run(path, out)
    study = load(out)
    lost = [t for t in study.trials if t.number in (0, 1)]
    assert all(t.state == TrialState.FAIL and t.user_attrs["status"] == "lost" for t in lost)
    assert "trial   0 lost" in log and "trial   1 lost" in log
    assert trial_counts(study).done == 2 and trial_counts(study).complete == 2
    assert {t.system_attrs.get("failed_trial") for t in study.trials[2:]} == {0, 1}
    check_files_agree(study, out)
    assert metrics(out, 0)["status"] == "lost" and "retried" in metrics(out, 0)["reason"]


def test_a_zombie_counts_as_dead():
    p = subprocess.Popen(["true"])
    started = _process_started(p.pid)
    assert wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10)
    assert process_alive(HOST, p.pid, started) is False  # not yet reaped: kill(pid, 0) alone says alive
    p.wait()
    assert process_alive(HOST, p.pid, started) is False
    assert process_alive(HOST, os.getpid(), _process_started(os.getpid())) is True


def test_the_loop_waits_for_a_live_worker_instead_of_exiting_then_retries_its_trial(tmp_path):
    # journal storage: other processes may share it, so a trial another live process claimed is not touched
    path = write_space(tmp_path, search__trials=1, train__epochs=1, search__storage=str(tmp_path / "j.log"))
    out = tmp_path / "run"
    study = optuna.create_study(study_name="tiny", storage=journal(tmp_path / "j.log"), direction="maximize")
    sleeper = subprocess.Popen(["sleep", "3"])
    t = study.ask()
    study._storage.set_trial_user_attr(t._trial_id, "worker_info", {
        "host": HOST, "pid": sleeper.pid, "started": _process_started(sleeper.pid), "trial": t.number})
    start = time.monotonic()
    summary, log = run(path, out)
    assert time.monotonic() - start > 2.5  # it waited for the sleeper (then a zombie: dead) instead of exiting
    sleeper.wait()
    study = optuna.load_study(study_name="tiny", storage=journal(tmp_path / "j.log"))
    assert study.trials[0].state == TrialState.FAIL and study.trials[0].user_attrs["status"] == "lost"
    assert study.trials[1].state == TrialState.COMPLETE and study.trials[1].system_attrs["failed_trial"] == 0
    assert summary["best_trial"] == 1 and "trial   0 lost" in log


@pytest.mark.filterwarnings("ignore")  # heartbeats are "experimental", and meant for study.optimize
def test_a_worker_on_another_host_that_stopped_beating_is_retried(tmp_path):
    from optuna.storages import RDBStorage

    from runners.search.storage import recover_lost_trials

    storage = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    t = study.ask()
    storage.set_trial_user_attr(t._trial_id, "worker_info", {"host": "elsewhere", "pid": 1, "trial": t.number})
    storage.record_heartbeat(t._trial_id)
    assert recover_lost_trials(study) == []  # its host may still be working on it
    time.sleep(2.5)
    assert recover_lost_trials(study) == [0]
    lost = study.trials[0]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "lost"
    assert "no heartbeat" in lost.user_attrs["reason"] and study.trials[1].state == TrialState.WAITING


def test_on_a_journal_file_a_worker_on_another_host_that_stopped_beating_is_retried(tmp_path, monkeypatch):
    """A journal file has no heartbeats of its own: workers renew a ``beat`` attribute, and a trial whose worker
    on another host fell silent for GRACE_S is failed as lost and retried, while a beating one is left alone."""
    import runners.search.storage as storage_module
    from runners.search.storage import heartbeat, recover_lost_trials

    monkeypatch.setattr(storage_module, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(storage_module, "GRACE_S", 2)
    study = optuna.create_study(study_name="s", storage=journal(tmp_path / "j.log"))
    silent, beating = study.ask(), study.ask()
    for t in (silent, beating):
        study._storage.set_trial_user_attr(t._trial_id, "worker_info", {"host": "elsewhere", "pid": 1,
                                                                          "trial": t.number})
    with heartbeat(beating._trial_id, study._storage):  # the thread a worker on that host would run
        first = study._storage.get_trial(beating._trial_id).user_attrs["beat"]
        assert recover_lost_trials(study) == []  # both may still be running on their host
        time.sleep(2.5)
        assert study._storage.get_trial(beating._trial_id).user_attrs["beat"] > first  # renewed
        assert recover_lost_trials(study) == [silent.number]
    lost = study.trials[silent.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["status"] == "lost"
    assert "elsewhere:1 sent no heartbeat for" in lost.user_attrs["reason"]
    assert study.trials[beating.number].state == TrialState.RUNNING
    assert study.trials[-1].state == TrialState.WAITING  # the retry


def test_search_run_on_a_journal_file_retries_a_silent_remote_worker_and_finishes(tmp_path, monkeypatch):
    """End to end: a study whose only missing trial is held by a worker on another host that stopped beating;
    `search run` waits past the grace period, fails it as lost, runs it again and reaches --trials."""
    import runners.search.storage as storage_module

    monkeypatch.setattr(storage_module, "GRACE_S", 3)
    log = tmp_path / "j.log"
    path = write_space(tmp_path, search__trials=1, train__epochs=1, search__storage=str(log))
    study = optuna.create_study(study_name="tiny", storage=journal(log), direction="maximize")
    t = study.ask()
    study._storage.set_trial_user_attr(t._trial_id, "worker_info", {"host": "elsewhere", "pid": 1,
                                                                      "trial": t.number})
    study._storage.set_trial_user_attr(t._trial_id, "beat", time.time())
    start = time.monotonic()
    summary, out_log = run(path, tmp_path / "run")
    assert time.monotonic() - start > 2.5  # it waited for the remote worker's grace period
    study = optuna.load_study(study_name="tiny", storage=journal(log))
    assert study.trials[0].state == TrialState.FAIL and "no heartbeat" in study.trials[0].user_attrs["reason"]
    assert study.trials[1].state == TrialState.COMPLETE and summary["best_trial"] == 1
    assert "trial   0 lost" in out_log


# ----------------------------------------------------------------------------------------------------------------
# 2. trials/ agrees with the study
# ----------------------------------------------------------------------------------------------------------------


def test_files_are_reconciled_with_the_study(tmp_path):
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    run(path, out)
    old = metrics(out, 1)
    # killed between the study's record and the file: metrics.json missing, its pending copy there
    (out / "trials/1/metrics.json").rename(out / "trials/1/metrics.pending.json")
    # killed between the file and the study's record: the file says complete, the trial is still RUNNING
    study = load(out)
    t = study.ask()
    study._storage.set_trial_user_attr(t._trial_id, "worker_info", {"host": HOST, "pid": 1, "trial": t.number})
    (out / "trials/2").mkdir()
    (out / "trials/2/metrics.json").write_text(json.dumps({**old, "trial": 2, "state": "complete"}))
    # Optuna's heartbeat failed a trial before anyone wrote why: it must not keep status running
    t3 = study.ask()
    study._storage.set_trial_user_attr(t3._trial_id, "status", "running")
    study._storage.set_trial_state_values(t3._trial_id, TrialState.FAIL)
    run(write_space(tmp_path, search__trials=3, train__epochs=1), out)
    study = load(out)
    check_files_agree(study, out)
    assert metrics(out, 1)["history"] == old["history"]  # rebuilt from the pending copy, nothing lost
    assert metrics(out, 2)["state"] == "failed" and metrics(out, 2)["status"] == "lost"
    assert metrics(out, 3)["status"] == "lost"
    assert {r.number: r.attrs["status"] for r in records_from_study(study)}[3] == "lost"


# ----------------------------------------------------------------------------------------------------------------
# 3. Bad data and recipes are found before the study starts, and a trial that failed on bad input does not count
# ----------------------------------------------------------------------------------------------------------------


def one_error_line(err: str) -> str:
    """The error line of a command whose progress lines came first: exactly one, the last, no traceback."""
    lines = err.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def no_trials(out: Path) -> bool:
    if not (out / "study.db").exists():
        return True
    return not optuna.get_all_study_names(sqlite(out)) or not load(out).trials


@pytest.mark.parametrize("args,field", [
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "train.data_dir"),
    (["--dataset", "synthetic"], "train.dataset"),  # 12 images at train_fraction 0.01 (below): no training rows
])
def test_bad_data_is_refused_before_any_trial(tmp_path, cli, args, field):
    path = write_space(tmp_path, train__synthetic_samples=12, train__train_fraction=0.01)
    out = tmp_path / "run"
    r = cli("run", path, "--out", out, *args)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and field in r.err, r
    assert no_trials(out)


def test_each_option_of_a_data_choice_is_checked(tmp_path, cli):
    path = write_space(tmp_path, train__dataset="synthetic", train__synthetic_samples=12,
                       train__train_fraction={"choice": [1.0, 0.01]})
    r = cli("run", path, "--out", tmp_path / "run")
    assert r.code == 2 and "train.dataset" in r.err and no_trials(tmp_path / "run")


def test_a_trial_that_failed_on_bad_input_does_not_count(tmp_path, cli, monkeypatch):
    path, out = write_space(tmp_path, search__trials=1, train__epochs=1), tmp_path / "run"
    real = trial_core.DataCache.get
    monkeypatch.setattr(engine, "preflight", lambda *a: None)  # as if only the trial could see the problem
    monkeypatch.setattr(trial_core.DataCache, "get", lambda *a: (_ for _ in ()).throw(
        SpecError("train.data_dir", "/gone is not a directory")))
    r = cli("run", path, "--out", out)
    assert r.code == 2 and one_error_line(r.err).startswith("error: train.data_dir: /gone"), r
    bad = load(out).trials[0]
    assert bad.state == TrialState.FAIL and bad.user_attrs["status"] == "bad_input"
    assert trial_counts(load(out)).done == 0
    monkeypatch.setattr(trial_core.DataCache, "get", real)  # the input is fixed: the rerun trains
    summary, _ = run(path, out)
    assert trial_counts(load(out)).complete == 1 and summary["best_trial"] == 1


# ----------------------------------------------------------------------------------------------------------------
# 4. Errors while sampling or writing are recorded on the trial; a full disk ends with one line
# ----------------------------------------------------------------------------------------------------------------


def test_any_error_while_sampling_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real, calls = trial_core.sample, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("'float' object cannot be interpreted as an integer")
        return real(*args, **kwargs)

    monkeypatch.setattr(trial_core, "sample", flaky)
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    summary, log = run(path, out)
    first, second = load(out).trials
    assert first.state == TrialState.FAIL and first.user_attrs["status"] == "error"
    assert first.user_attrs["reason"] == ("sampling failed: TypeError: 'float' object cannot be interpreted as an "
                                          "integer")
    assert second.state == TrialState.COMPLETE and metrics(out, 0)["reason"] == first.user_attrs["reason"]


def test_a_trial_directory_that_cannot_be_written_fails_that_trial(tmp_path, monkeypatch):
    real, calls = engine.write_text, []

    def flaky(p, text):
        calls.append(p)
        if len(calls) == 1:
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(p))
        return real(p, text)

    monkeypatch.setattr(engine, "write_text", flaky)
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    run(path, out)
    first, second = load(out).trials
    assert first.state == TrialState.FAIL and first.user_attrs["reason"].startswith("cannot write ")
    assert "File name too long" in first.user_attrs["reason"] and second.state == TrialState.COMPLETE


def test_a_full_disk_ends_the_search_with_one_line_and_the_rerun_finishes(tmp_path, cli, monkeypatch):
    real = engine.write_text

    def full(p, text):
        if "trials/1/" in str(p):
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real(p, text)

    monkeypatch.setattr(engine, "write_text", full)
    path, out = write_space(tmp_path, search__trials=3, train__epochs=1), tmp_path / "run"
    r = cli("run", path, "--out", out)
    assert r.code == 2 and "No space left on device" in one_error_line(r.err) and "rerun" in r.err, r
    assert load(out).trials[1].state == TrialState.RUNNING  # left for the next run to retry, nothing half-written
    monkeypatch.setattr(engine, "write_text", real)
    run(path, out)
    study = load(out)
    hit = study.trials[1]
    assert hit.state == TrialState.FAIL and hit.user_attrs["status"] == "lost"
    assert "No space left on device; retried" in hit.user_attrs["reason"]
    assert trial_counts(study).done == 3 and trial_counts(study).complete == 3
    check_files_agree(study, out)


def test_a_disk_that_fills_up_during_a_search_ends_with_one_line_and_loses_nothing(tmp_path):
    """A real full disk for the study's database: a file-size limit (RLIMIT_FSIZE) a few pages above its size."""
    import resource

    path, out = write_space(tmp_path, search__trials=1, train__epochs=1), tmp_path / "run"
    assert subprocess.run(command(path, out), env=ENV, capture_output=True, timeout=300).returncode == 0
    room = (out / "study.db").stat().st_size + 8192

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, room))

    full = subprocess.run(command(path, out, "--trials", "200"), env=ENV, capture_output=True, text=True,
                          timeout=600, preexec_fn=small_disk)
    assert full.returncode == 2, full.stderr
    line = one_error_line(full.stderr)
    assert line.startswith("error: --out: cannot write") and "rerun the same command" in line, line
    study = load(out)
    kept = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    more = trial_counts(study).done + 2
    done = subprocess.run(command(path, out, "--trials", str(more)), env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    study = load(out)
    assert {t.number: t.values for t in study.trials if t.number in kept} == kept
    assert trial_counts(study).done == more and trial_counts(study).failed == 0  # the trial it hit did not count
    check_files_agree(study, out)


def test_an_unwritable_out_is_refused_with_one_line(tmp_path, cli):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "run", Path("/proc/nas-run")):
        r = cli("run", write_space(tmp_path), "--out", out)
        assert r.code == 2 and r.err.startswith("error: --out:") and len(r.err.strip().splitlines()) == 1, r


# ----------------------------------------------------------------------------------------------------------------
# 5. 6. One process per SQLite study; a vanished study is not started over; show never creates one
# ----------------------------------------------------------------------------------------------------------------


def test_a_second_process_on_a_sqlite_study_is_refused(tmp_path, cli):
    out = tmp_path / "run"
    held = RunLock(out / "study.db").acquire()  # flock locks belong to open files: as if another process held it
    try:
        r = cli("run", write_space(tmp_path), "--out", out)
    finally:
        held.release()
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r
    assert "in use by another `search run`" in r.err and "--workers" in r.err and "journal:" in r.err
    assert no_trials(out)


def test_a_vanished_study_is_not_started_over(tmp_path, cli):
    path, out = write_space(tmp_path, search__trials=1, train__epochs=1), tmp_path / "run"
    run(path, out)
    kept = (out / "trials/0/metrics.json").read_bytes()
    db = out / "study.db"
    db.write_bytes(b"")  # truncated
    r = cli("run", path, "--out", out)
    assert r.code == 2 and "is empty" in r.err and "--out" in r.err and len(r.err.strip().splitlines()) == 1
    db.unlink()  # deleted
    r = cli("run", path, "--out", out)
    assert r.code == 2 and "is missing" in r.err and not db.exists()
    r = cli("show", out)
    assert r.code == 2 and "missing or empty" in r.err and not db.exists()  # show never creates a study file
    assert (out / "trials/0/metrics.json").read_bytes() == kept


def test_show_refuses_a_corrupt_run_json_with_one_line(tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    for text in ("{not json", "[]", json.dumps({"name": "x", "storage": 3}),
                 json.dumps({"name": "x", "storage": f"sqlite:///{out / 'none.db'}", "study_name": "x"})):
        (out / "run.json").write_text(text)
        r = cli("show", out)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, (text, r)
    assert not (out / "none.db").exists()


# ----------------------------------------------------------------------------------------------------------------
# 7. 8. Signals and dead parents
# ----------------------------------------------------------------------------------------------------------------


def running_trial(storage_url_or_storage, pid: int | None = None, young: float = 1.5):
    """The claimed RUNNING trial of a process (any process when pid is None) that started less than ``young`` s
    ago, so it cannot finish between the look and a signal."""
    try:
        study = optuna.load_study(study_name="tiny", storage=storage_url_or_storage)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker_info") or {}
        if who.get("trial") == t.number and (pid is None or who.get("pid") == pid) and \
                (datetime.now() - t.datetime_start).total_seconds() < young:
            return t
    return None


@pytest.mark.parametrize("sig,times,code", [(signal.SIGTERM, 1, 143), (signal.SIGHUP, 1, 129),
                                            (signal.SIGINT, 2, 130)])
def test_signals_stop_like_ctrl_c_and_the_trial_is_retried(tmp_path, sig, times, code):
    path, out = write_space(tmp_path, search__trials=2, train__epochs=40), tmp_path / "run"
    proc = subprocess.Popen(command(path, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert wait_for(lambda: running_trial(sqlite(out)) is not None, 120, proc), proc.stderr.read()
        time.sleep(0.3)  # inside training
        for _ in range(times):  # a double Ctrl-C must not cut the recording short
            proc.send_signal(sig)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err
    first = load(out).trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["status"] == "interrupted"
    assert first.user_attrs["reason"] and metrics(out, 0)["status"] == "interrupted"
    assert load(out).trials[1].state == TrialState.WAITING and load(out).trials[1].system_attrs["failed_trial"] == 0


def test_killing_the_workers_parent_stops_its_children_and_the_rerun_retries_their_trials(tmp_path):
    log = tmp_path / "j.log"
    path, out = write_space(tmp_path, search__trials=4, train__epochs=40), tmp_path / "run"
    args = command(path, out, "--workers", "2", "--storage", f"journal:{log}", "--threads", "1")
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def child_running():
        if not log.exists():
            return None
        t = running_trial(journal(log), young=60)
        pid = (t.user_attrs["worker_info"]["pid"] if t else None)
        return pid if pid and pid != proc.pid else None

    try:
        assert wait_for(lambda: child_running() is not None, 180, proc), proc.stderr.read()
        child = child_running()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the child notices (PR_SET_PDEATHSIG), records its trial as interrupted and stops
        assert wait_for(lambda: process_alive(HOST, child, None) is False, 60)
    finally:
        proc.kill()
        proc.wait()
    study = optuna.load_study(study_name="tiny", storage=journal(log))
    stopped = [t for t in study.trials if t.user_attrs.get("worker_info", {}).get("pid") == child
               and t.state == TrialState.FAIL]
    assert stopped and stopped[0].user_attrs["status"] == "interrupted"
    # short trials from here on: a change of recipe that must be asked for (issue 27, item 8)
    done = subprocess.run(command(path, out, "--storage", f"journal:{log}", "--epochs", "1", "--continue-anyway"),
                          env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="tiny", storage=journal(log))
    assert trial_counts(study).done == 4 and not [t for t in study.trials if not t.state.is_finished()]
    assert any(t.system_attrs.get("failed_trial") == stopped[0].number and t.state == TrialState.COMPLETE
               for t in study.trials)
    check_files_agree(study, out)
    assert (out / "best.yaml").exists()


def test_out_of_memory_is_recognised():
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 68719476736 bytes. Error code 12"))
    assert is_oom(MemoryError()) and is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_out_of_memory_loading_a_trials_data_fails_that_trial_only(tmp_path, monkeypatch):
    real, calls = trial_core.DataCache.get, []

    def oom_once(self, config, size):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return real(self, config, size)

    monkeypatch.setattr(engine, "preflight", lambda *a: None)
    monkeypatch.setattr(trial_core.DataCache, "get", oom_once)
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    summary, _ = run(path, out)
    first, second = load(out).trials
    assert first.state == TrialState.FAIL and first.user_attrs["status"] == "oom"
    assert "can't allocate memory" in first.user_attrs["reason"] and second.state == TrialState.COMPLETE


# ----------------------------------------------------------------------------------------------------------------
# 9. 10. 11. 12. Objectives, seeds, URLs, warmup
# ----------------------------------------------------------------------------------------------------------------


def test_a_cost_objective_is_never_pruned_on_accuracy_and_the_last_line_names_it(tmp_path):
    path = write_space(tmp_path, LR_ONLY, search__objectives=["params"], search__pruner="median",
                       search__pruner_startup_trials=0, search__trials=3, train__epochs=2)
    summary, log = run(path, tmp_path / "run")
    study = load(tmp_path / "run")
    assert not [t for t in study.trials if t.user_attrs.get("status") == "pruned"]
    assert "pruning reads validation accuracy" in log
    last = [line for line in log.splitlines() if line.startswith("best:")][-1]
    assert f"params {summary['best_value']:,.0f}" in last and "accuracy" not in last, last


def test_seed_reproduces_a_single_process_run_on_a_journal_as_on_sqlite(tmp_path):
    def params(storage, out, seed):
        path = write_space(tmp_path, search__trials=3, train__epochs=1, search__sampler="tpe",
                           search__startup_trials=2, search__seed=seed, search__storage=storage)
        run(path, out)
        s = journal(Path(storage)) if storage else sqlite(out)
        return [t.params for t in optuna.load_study(study_name="tiny", storage=s).trials]

    on_sqlite = params(None, tmp_path / "a", 5)
    assert params(str(tmp_path / "b.log"), tmp_path / "b", 5) == on_sqlite
    assert params(None, tmp_path / "c", 6) != on_sqlite


def test_postgres_urls_get_psycopg3_and_passwords_are_masked(tmp_path):
    from search_space.config import SearchConfig

    url = storage_url(SearchConfig(storage="postgresql://nas:pa:ss@db.example:5432/nas"), tmp_path)
    assert url == "postgresql+psycopg://nas:pa:ss@db.example:5432/nas"
    assert masked(url) == "postgresql+psycopg://nas:***@db.example:5432/nas"
    assert without_password(url) == "postgresql+psycopg://nas@db.example:5432/nas"
    assert masked("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(SpecError, match="memory"):
        storage_url(SearchConfig(storage="sqlite:///:memory:"), tmp_path)


def test_a_missing_postgres_driver_is_named_with_its_install_command(tmp_path, monkeypatch):
    """Without psycopg installed, a postgresql:// storage stops with one line naming the driver and the pip
    command, not SQLAlchemy's ModuleNotFoundError (and without the password)."""
    import sys

    from runners.search.storage import open_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # an import of it now raises ImportError, as if absent
    with pytest.raises(SpecError) as info:
        open_storage("postgresql+psycopg://nas:secret@127.0.0.1:1/nas")
    line = str(info.value)
    assert line.startswith("search.storage: cannot open postgresql+psycopg://nas:***@127.0.0.1:1/nas: "
                           "postgresql+psycopg needs the psycopg 3 driver, which is not installed")
    assert "pip install 'psycopg[binary]'" in line and "secret" not in line and "\n" not in line


def test_a_closed_postgres_port_gives_one_line_without_the_password(tmp_path, cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("run", write_space(tmp_path), "--out", tmp_path / "run", "--storage",
            f"postgresql://nas:hunter2@127.0.0.1:{port}/nas")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "hunter2" not in r.err and "***" in r.err, r


@pytest.mark.parametrize("path", sorted((ROOT / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_never_prune_on_warmup_accuracy(path):
    spec = load_spec(path)
    if spec.search.pruner == "none":
        return
    assert spec.search.pruner_min_epochs >= warmup_end(spec), "say it in the file, too"
    pruner, _ = make_pruner(spec.search, max_epochs(spec), ["val_accuracy"], warmup_end(spec))
    first = getattr(pruner, "_min_resource", None) or getattr(pruner, "_n_warmup_steps", None)
    assert first >= warmup_end(spec)


def test_the_pruner_starts_after_warmup_whatever_the_spec_says():
    from search_space.config import SearchConfig

    pruner, _ = make_pruner(SearchConfig(pruner="median", pruner_min_epochs=1), 6, ["val_accuracy"], 3)
    assert pruner._n_warmup_steps == 3


# ----------------------------------------------------------------------------------------------------------------
# Random kills: SIGKILL at random moments, then resume; nothing completed is lost or altered
# ----------------------------------------------------------------------------------------------------------------


def kill_and_resume(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    out = tmp_path / "run"
    seen: dict[int, list[float]] = {}
    moments: dict[str, int] = {}  # where the kills landed (printed; pytest -s shows it)
    for i in range(rounds):
        trials = 2 * (i + 1)
        path = write_space(tmp_path, search__trials=trials, train__epochs=1, search__sampler="tpe",
                           search__pruner="median", search__pruner_min_epochs=1, search__pruner_startup_trials=1,
                           train__warmup_epochs=0)
        proc = subprocess.Popen(command(path, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.2:  # while it starts: imports, opening or creating the study, loading the data
            time.sleep(rng.uniform(0.1, 4.0))
        else:  # once it works on its first trial: sampling, training, recording, writing files, the next trials
            wait_for(lambda: running_trial(sqlite(out), proc.pid, young=60) is not None, 120, proc)
            time.sleep(rng.uniform(0.0, 3.0))
        proc.kill()
        proc.wait()
        moment = "before the study existed"
        if (out / "study.db").exists() and optuna.get_all_study_names(sqlite(out)):
            study = load(out)
            assert {n: t.values for n, t in ((t.number, t) for t in study.trials) if n in seen} == seen, i
            running = [t for t in study.trials if t.state == TrialState.RUNNING]
            unwritten = [t for t in study.trials if t.state.is_finished()
                         and not (out / "trials" / str(t.number) / "metrics.json").exists()]
            moment = ("inside a trial" if running else "between a record and its file" if unwritten
                      else "between trials, while starting or after the end")
        moments[moment] = moments.get(moment, 0) + 1
        done = subprocess.run(command(path, out), env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        study = load(out)
        got = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
        assert {n: got.get(n) for n in seen} == seen, f"round {i}: a completed trial was lost or altered"
        assert trial_counts(study).done == trials, f"round {i}: the study did not reach --trials"
        check_files_agree(study, out)
        best = ranked(records_from_study(study), ["val_accuracy"])[0]
        assert load_spec(out / "best.yaml").model == load_spec(out / "trials" / str(best.number) / "arch.yaml").model
        seen = got
    print(f"{rounds} random kills, all resumed without loss: {moments}")


def test_random_kills_lose_nothing(tmp_path):
    kill_and_resume(tmp_path, rounds=5, seed=int(os.environ.get("KILL_SEED", 0)))


@pytest.mark.slow
def test_random_kills_lose_nothing_many_rounds(tmp_path):
    kill_and_resume(tmp_path, rounds=25, seed=int(os.environ.get("KILL_SEED", 1)))


def test_worker_processes_stop_when_the_block_fails_and_a_failed_one_is_named():
    """The helper every `--workers` uses (search run, search fidelity, the benchmark): an error beside the
    workers stops them rather than leaving them to run on; a worker's non-zero exit is reported by index."""
    import sys

    from runners.common.signals import failed_processes, processes_beside

    with pytest.raises(RuntimeError):
        with processes_beside(time.sleep, lambda i: (60,), 2) as children:
            raise RuntimeError("the first process failed")
    assert len(children) == 2 and not any(p.is_alive() for p in children)
    with processes_beside(sys.exit, lambda i: (3 if i == 2 else 0,), 2) as children:
        pass
    assert failed_processes(children) == [(2, 3)]
