"""Packing trials onto one device by the memory model (runners/search/packing.py), on the CPU.

The ledger is a real file under a real flock; the trials really train (tiny space, one epoch). What the CPU cannot
do is run out of device memory, so the shared-card OOM is injected the way tests/test_faults.py injects faults:
the first training call of a trial returns train()'s own ``oom`` result; everything else is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import ROOT, SUBPROCESS_ENV, write_space
from search_space.sampling import RandomSuggester
from search_space.spec import load_spec

from runners.search import packing as packing_mod
from runners.search.packing import MIB, Ledger, Packing
from runners.search.trial import Evaluator, TrialHooks
from runners.training import loop

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")


def test_ledger_admits_what_fits_waits_alone_and_forgets_the_dead(tmp_path):
    ledger = Ledger(tmp_path / "cpu.json", capacity=100)
    assert ledger.try_reserve("a", 60) == {"admission": 1, "others": 0}
    assert ledger.try_reserve("b", 50) is None                     # 110 > 100
    assert ledger.try_reserve("b", 40) == {"admission": 2, "others": 1}
    assert ledger.try_reserve("c", 1, alone=True) is None          # alone waits for an empty card
    assert ledger.used() == 100
    assert ledger.release("a") == 2 and ledger.release("b") == 2
    assert ledger.try_reserve("c", 1, alone=True)["others"] == 0
    assert ledger.used() == 100 and ledger.try_reserve("d", 1) is None  # alone holds the whole card
    ledger.release("c")
    # an entry of a process that died on this host is dropped at the next read
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = json.loads(ledger.path.read_text())
    state["entries"]["ghost"] = {"pid": int(dead.stdout), "host": ledger.host, "bytes": 100, "alone": False}
    ledger.path.write_text(json.dumps(state))
    assert ledger.try_reserve("e", 100) is not None
    ledger.release("e")
    # a process's data stays reserved after its trial (its dataset stays cached on the device between trials),
    # is taken once however many trials it runs, and a trial alone gets the card less what data holds
    assert ledger.try_reserve("t1", 30, resident_key="p:data", resident=20)["others"] == 0
    assert ledger.used() == 50 and ledger.release("t1") and ledger.used() == 20
    assert ledger.try_reserve("t2", 70, resident_key="p:data", resident=20) is not None   # 20 + 70 <= 100
    ledger.release("t2")
    assert ledger.try_reserve("t3", 10, alone=True) is not None and ledger.used() == 100


def test_a_trial_waits_while_the_card_is_full(tmp_path):
    packing = Packing(Ledger(tmp_path / "cpu.json", capacity=10), CPU)
    lines: list[str] = []
    first = packing.hold(1, 8, lines.append)
    first.__enter__()
    admitted = threading.Event()

    def second():
        with packing.hold(2, 5, lines.append):
            admitted.set()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.0)
    assert not admitted.is_set() and any("waiting for device memory" in line for line in lines)
    first.__exit__(None, None, None)
    thread.join(10)
    assert admitted.is_set() and packing.ledger.entries() == {}


def tiny_spec(tmp_path, **changes):
    return load_spec(write_space(tmp_path, train__epochs=1, **changes))


def evaluate(spec, packing, seed=0):
    evaluator = Evaluator(spec, CPU)
    evaluator.packing = packing
    return evaluator.evaluate(0, RandomSuggester(seed), TrialHooks())


def fail_first_with_oom(monkeypatch):
    real, calls = loop.train, []

    def train(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return loop.TrainResult("oom", reason="out of memory in epoch 1 (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train", train)
    return calls


def test_an_oom_beside_other_trials_is_retried_alone_and_not_recorded(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    ledger = Ledger(tmp_path / "cpu.json", capacity=64 * MIB)
    # another live process holds part of the card while this trial is admitted
    ledger.try_reserve("neighbour", MIB)
    state = json.loads(ledger.path.read_text())
    state["entries"]["neighbour"]["pid"] = os.getppid()
    ledger.path.write_text(json.dumps(state))
    calls = fail_first_with_oom(monkeypatch)
    waits = []
    packing = Packing(ledger, CPU)
    real_hold = packing.hold

    def hold(number, nbytes, status, alone=False, resident=0):
        if alone:
            ledger.release("neighbour")  # the neighbour finishes; the retry can then have the card
        return real_hold(number, nbytes, waits.append, alone, resident)

    packing.hold = hold
    outcome = evaluate(spec, packing)
    assert len(calls) == 2
    assert outcome.state == "complete" and outcome.status == "ok", outcome.reason
    memory = outcome.info["memory"]
    assert memory["retried_alone"] is True and "injected" in memory["oom_shared"]
    assert 0 < memory["predicted_mb"] < memory["reserved_mb"]
    # the trial's reservation is gone; the process's data stays reserved while the process lives
    assert [e["kind"] for e in ledger.entries().values()] == ["resident"]


def test_an_oom_alone_is_the_architectures(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    calls = fail_first_with_oom(monkeypatch)
    outcome = evaluate(spec, Packing(Ledger(tmp_path / "cpu.json", capacity=64 * MIB), CPU))
    assert len(calls) == 1 and outcome.status == "oom" and "retried_alone" not in outcome.info["memory"]


def test_a_trial_that_cannot_fit_alone_is_oom_before_it_starts(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)
    calls = fail_first_with_oom(monkeypatch)
    outcome = evaluate(spec, Packing(Ledger(tmp_path / "cpu.json", capacity=MIB // 4), CPU))
    assert calls == [] and outcome.state == "failed" and outcome.status == "oom"
    assert "cannot fit even alone" in outcome.reason and "MiB" in outcome.reason


def test_need_follows_the_memory_model(tmp_path):
    from search_space.memory import architecture_memory

    spec = tiny_spec(tmp_path)
    evaluator = Evaluator(spec, CPU)
    sampled = evaluator._draw(0, RandomSuggester(1), None, True)
    data = evaluator.data.get(sampled.train, sampled.model.input_size)
    need = packing_mod.trial_need(sampled, data, CPU)
    step = architecture_memory(sampled.model, sampled.train.batch_size, sampled.model.input_size,
                               data.channels, data.num_classes).total_bytes
    assert need.step == step and need.predicted == step + need.data
    assert need.reserve == int(need.predicted * (1 + packing_mod.MARGIN))


def test_search_run_packs_trials_on_a_made_up_card(tmp_path):
    """End to end: two processes share the CPU 'card' through the ledger; every trial completes and records
    what it reserved; the ledger is empty afterwards."""
    path = write_space(tmp_path, train__epochs=1, search__trials=2)
    out = tmp_path / "run"
    env = {**SUBPROCESS_ENV, "SEARCH_LEDGER_DIR": str(tmp_path / "ledger")}
    result = subprocess.run([sys.executable, "-m", "search_space.cli", "run", str(path), "--out", str(out),
                             "--trials-per-gpu", "2", "--device-memory-mb", "8", "--device", "cpu", "--threads", "1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "packed by memory (8 MiB" in result.stdout + result.stderr
    for n in range(2):
        info = json.loads((out / "trials" / str(n) / "metrics.json").read_text())
        assert info["status"] == "ok" and info["memory"]["reserved_mb"] > 0
    assert Ledger(tmp_path / "ledger" / "cpu.json", 0).entries() == {}  # every process has ended
    assert (out / "study.log").exists()  # several writers: a journal file, not SQLite
    bad = subprocess.run([sys.executable, "-m", "search_space.cli", "run", str(path), "--out", str(out),
                          "--trials-per-gpu", "2", "--device", "cpu"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "device_memory_mb" in bad.stderr
