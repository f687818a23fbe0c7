"""A real PostgreSQL 15 server (a throwaway cluster: initdb + pg_ctl on a free loopback port, as a non-root user):
``search run`` on a plain ``postgresql://`` URL uses psycopg 3, never shows the password, and two processes share
one study where a killed one's trial is retried and nothing is lost."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from test_search import ENV, wait_for, write_space

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "nas_pg"  # the OS user the server runs as when the tests run as root (postgres refuses root)
PASSWORD = "s3cret-Pw-42"


def as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server for this module; yields the plain postgresql:// URL (with its password)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb); .ci/run installs it")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                           check=True)
    root = Path(tempfile.mkdtemp(prefix="nas-pg-", dir="/tmp"))  # pytest's tmp dirs are closed to other users
    (root / "pw").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER)
        shutil.chown(root / "pw", PG_USER)
    port = free_port()
    data = root / "data"
    subprocess.run(as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-U", "nas", "--auth=scram-sha-256",
                             f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-instructions"]),
                   check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run(as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", opts, "-w",
                             "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://nas:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_owner([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def run_cmd(path: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search_space.cli", "run", str(path), "--out", str(out), "--storage", url, *extra]


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://"))


def test_plain_url_uses_psycopg3_and_never_shows_the_password(postgres, tmp_path):
    path, out = write_space(tmp_path, search__trials=2, train__epochs=1), tmp_path / "run"
    done = subprocess.run(run_cmd(path, out, postgres, "--study-name", "plain"), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr and "postgresql+psycopg://nas:***@127.0.0.1" in done.stderr
    info = json.loads((out / "run.json").read_text())
    assert PASSWORD not in json.dumps(info) and info["storage"].startswith("postgresql+psycopg://nas@127.0.0.1")
    assert len(study_of(postgres, "plain").trials) == 2

    # search show reads the password the way libpq does (PGPASSWORD, ~/.pgpass); without it: one line, exit 2
    shown = subprocess.run([sys.executable, "-m", "search_space.cli", "show", str(out)], capture_output=True,
                           text=True, timeout=120, env={**ENV, "PGPASSWORD": PASSWORD})
    assert shown.returncode == 0 and "2/2 trials" in shown.stdout, shown.stderr
    env = {k: v for k, v in ENV.items() if k != "PGPASSWORD"}
    refused = subprocess.run([sys.executable, "-m", "search_space.cli", "show", str(out)], capture_output=True,
                             text=True, timeout=120, env=env)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "password" in refused.stderr and PASSWORD not in refused.stderr

    # a wrong password: one line, exit 2, the password masked
    wrong = postgres.replace(PASSWORD, "not-the-" + PASSWORD)
    bad = subprocess.run(run_cmd(path, tmp_path / "run2", wrong, "--study-name", "plain"), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "not-the-" not in bad.stderr and "***" in bad.stderr


def test_two_processes_share_a_study_and_a_killed_ones_trial_is_retried(postgres, tmp_path):
    # 25-epoch trials last a few seconds, so the kill lands inside a trial
    path, out = write_space(tmp_path, search__trials=6, train__epochs=25), tmp_path / "run"
    args = run_cmd(path, out, postgres, "--study-name", "shared")
    procs = [subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    victim, survivor = procs

    def victim_running():
        try:
            trials = study_of(postgres, "shared").trials
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return any(t.state == TrialState.RUNNING and t.user_attrs.get("worker_info", {}).get("pid") == victim.pid
                   and t.user_attrs["worker_info"].get("trial") == t.number for t in trials)

    try:
        assert wait_for(victim_running, 180, victim), victim.stderr.read() if victim.poll() is not None else "timeout"
        before = study_of(postgres, "shared").trials
        killed = [t.number for t in before if t.state == TrialState.RUNNING
                  and t.user_attrs.get("worker_info", {}).get("pid") == victim.pid]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        _, err = survivor.communicate(timeout=400)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert survivor.returncode == 0, err
    completed = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    study = study_of(postgres, "shared")
    after = {t.number: t for t in study.trials}
    assert {n: after[n].values for n in completed} == completed  # nothing completed was lost or altered
    assert len(killed) == 1 and after[killed[0]].state == TrialState.FAIL
    assert after[killed[0]].user_attrs["status"] == "lost" and "retried" in after[killed[0]].user_attrs["reason"]
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert not [t for t in study.trials if not t.state.is_finished()]
    counted = [t for t in study.trials if t.number != killed[0]]
    assert len(counted) >= 6 and all(t.state == TrialState.COMPLETE for t in counted)
    for t in study.trials:  # trials/ agrees with the study
        metrics = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())
        assert metrics["state"] == {"COMPLETE": "complete", "FAIL": "failed"}[t.state.name]
