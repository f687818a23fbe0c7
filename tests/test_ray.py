"""`search run --backend ray`: the Ray Tune engine on a real local Ray, a real two-node cluster, and after
interrupts. Every search is a tiny space at 8x8 on digits with one epoch and one thread per trial."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_space.spec import dump_spec, load_spec

import conftest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**conftest.SUBPROCESS_ENV, "RAY_USAGE_STATS_ENABLED": "0"}

def write_space(tmp_path: Path, **changes) -> Path:
    """The tiny space on the Ray engine, one epoch per trial."""
    ray_space = {"train__epochs": 1, "train__lr": {"choice": [0.1, 0.3]}, "search__sampler": "tpe",
                 "search__backend": "ray"}
    return conftest.write_space(tmp_path, **{**ray_space, **changes})


def search(*args, cwd: Path, timeout: float = 400, env: dict = ENV) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search_space.cli", "run", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def trial_files(out: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in (out / "trials").glob("*/metrics.json")}


def test_local_ray_search_prunes_records_a_failing_trial_and_writes_the_same_results(tmp_path):
    """A real local Ray: trials run; ASHA (pruner successive_halving) stops trials that learn nothing (lr 1e-5)
    after epoch 1 and records them as pruned, but never stops a finished trial; a diverging warm start is
    recorded with its reason; the table, best.yaml, trials/ and `search show` come out as on the Optuna engine."""
    import dataclasses

    from search_space.sampling import RandomSuggester, sample

    space = load_spec(write_space(tmp_path))
    bad = sample(space, RandomSuggester(1))
    bad = dataclasses.replace(bad, train=dataclasses.replace(bad.train, lr=1.0e6))  # diverges at once
    (tmp_path / "diverges.yaml").write_text(dump_spec(bad))
    path = write_space(tmp_path, search__warm_start=["diverges.yaml"], search__trials=6, search__sampler="random",
                       search__pruner="successive_halving", train__epochs=2,
                       train__lr={"choice": [0.3, 1.0e-5, 1.0e6]})
    out = tmp_path / "run"
    done = search(path, "--out", out, "--max-concurrent", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank  trial  val_acc" in done.stdout and "blocks (per stage)" in done.stdout
    assert "Ray Tune on 1 node(s)" in done.stderr and "+ ASHA" in done.stderr
    files = trial_files(out)
    assert sorted(files) == list(range(6))
    warm = files[0]
    assert warm["warm_start"].endswith("diverges.yaml") and warm["optuna_params"]["train.lr"] == 1.0e6
    assert warm["state"] == "failed" and warm["status"] == "diverged" and warm["reason"]
    assert "(diverged:" in done.stderr
    pruned = [m for m in files.values() if m["state"] == "pruned"]
    assert pruned, files
    for m in pruned:
        assert m["reason"].startswith("stopped by ASHA after epoch 1") and m["epochs"] == 1
        assert m["val_accuracy"] is not None and m["seconds"] > 0
    complete = {n: m for n, m in files.items() if m["state"] == "complete"}
    assert complete, files
    for n, m in complete.items():
        assert m["epochs"] == 2 and m["values"]["val_accuracy"] == m["val_accuracy"]
        assert set(m["optuna_params"]) <= set(m["distributions"]) and m["node"]  # what `search report` reads
        assert load_spec(out / "trials" / str(n) / "arch.yaml").is_fixed()
    best_number = max(complete, key=lambda n: (complete[n]["val_accuracy"], -complete[n]["params"], -n))
    best = load_spec(out / "best.yaml")
    assert best.model == load_spec(out / "trials" / str(best_number) / "arch.yaml").model
    assert json.loads((out / "run.json").read_text())["backend"] == "ray"
    kept = sorted(int(p.parent.name) for p in out.glob("trials/*/weights.pt"))  # the workers keep them too
    assert best_number in kept and set(kept) <= set(complete) and len(kept) <= 3, kept
    assert json.loads((out / "best.json").read_text())["weights"] == f"trials/{best_number}/weights.pt"
    shown = subprocess.run([sys.executable, "-m", "search_space.cli", "show", str(out)], env=ENV,
                           capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and "6/6 trials" in shown.stdout and f"  {best_number}  " in shown.stdout
    compiled = subprocess.run([sys.executable, "-m", "search_space.cli", "compile", str(out / "best.yaml")],
                              env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr


def test_nondominated_rank_scheduler_decides_as_the_optuna_engine():
    """The Ray scheduler for several objectives applies runners.search.mo_pruning.should_stop at its rungs: a trial
    dominated at its cost by the earlier trials at the rung is stopped, one on the front continues, and outcomes
    and epochs that are no rung are never stopped."""
    from runners.search.mo_pruning import should_stop
    from runners.search.ray_engine import NondominatedRankScheduler, make_scheduler
    from search_space.config import SearchConfig

    scheduler, name = make_scheduler(SearchConfig(pruner="successive_halving", pruner_min_epochs=1), 4,
                                     ["val_accuracy", "params"], first_epoch=1)
    assert isinstance(scheduler, NondominatedRankScheduler) and sorted(scheduler.rungs) == [1]  # one cut
    assert name == "non-dominated-rank successive halving"

    def result(acc, params, epoch=1, **extra):
        return {"val_accuracy": acc, "epoch": epoch, "attrs": json.dumps({"params": params, "macs": 1}), **extra}

    seen, decisions = [], []
    for acc, params in [(0.9, 100), (0.8, 200), (0.95, 50), (0.5, 300), (0.2, 10), (0.85, 150)]:
        expected = should_stop([-acc, params], seen, eta=3)
        decisions.append(scheduler.on_trial_result(None, None, result(acc, params)))
        assert decisions[-1] == (scheduler.STOP if expected else scheduler.CONTINUE)
        seen.append([-acc, params])
    assert decisions[1] == scheduler.STOP and decisions[2] == scheduler.CONTINUE  # dominated / on the front
    for epoch in (2, 3):  # no rung: several objectives are cut once
        assert scheduler.on_trial_result(None, None, result(0.1, 999, epoch=epoch)) == scheduler.CONTINUE
    assert scheduler.on_trial_result(None, None, result(0.1, 999, state="complete")) == scheduler.CONTINUE
    one, _ = make_scheduler(SearchConfig(pruner="none"), 4, ["val_accuracy", "params"])
    assert not isinstance(one, NondominatedRankScheduler)


def test_multi_objective_ray_search_prunes_by_nondominated_rank(tmp_path):
    """A real local Ray search on val_accuracy x params with a pruner: trials dominated at the rung stop there
    and are recorded as pruned by the non-dominated-rank scheduler; the rest finish and form pareto/."""
    path = write_space(tmp_path, search__trials=6, search__sampler="random", search__pruner="successive_halving",
                       search__objectives=["val_accuracy", "params"], train__epochs=2,
                       train__lr={"choice": [0.3, 1.0e-5]})
    out = tmp_path / "run"
    done = search(path, "--out", out, "--max-concurrent", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "non-dominated-rank successive halving" in done.stderr
    files = trial_files(out)
    assert sorted(files) == list(range(6))
    pruned = [m for m in files.values() if m["state"] == "pruned"]
    complete = [m for m in files.values() if m["state"] == "complete"]
    assert pruned and complete, files
    for m in pruned:
        assert m["reason"].startswith("stopped by non-dominated-rank successive halving after epoch 1")
        assert m["epochs"] == 1
    assert all(m["epochs"] == 2 for m in complete)
    assert list((out / "pareto").glob("*.yaml"))


def test_ray_options_need_the_ray_backend(tmp_path):
    path = write_space(tmp_path, search__backend="optuna")
    done = search(path, "--gpus-per-trial", "0.5", cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "--gpus-per-trial" in done.stderr and "--backend ray" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_ray_search_resumes_without_losing_trials(tmp_path, sig):
    """Interrupt the driver after the first trial ends; rerunning the command restores the experiment
    (Tuner.restore), keeps every finished trial as it was and reaches the trial count. In the SIGINT run, the
    worker process training the first trial is SIGKILLed first: FailureConfig runs that trial again."""
    path = write_space(tmp_path, search__trials=4, train__epochs=2)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "search_space.cli", "run", str(path), "--out", str(out),
                             "--max-concurrent", "1"], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    killed_worker = None
    while sig == signal.SIGINT and killed_worker is None and time.monotonic() < deadline and proc.poll() is None:
        for pid, user_seconds in _trial_workers():
            if user_seconds > 1.0:  # training, not starting up
                os.kill(pid, signal.SIGKILL)
                killed_worker = pid
                break
        time.sleep(0.2)
    assert sig != signal.SIGINT or killed_worker, "no trial worker was seen training"
    while time.monotonic() < deadline and not trial_files(out) and proc.poll() is None:
        time.sleep(0.3)
    assert trial_files(out), "no trial finished in time"
    time.sleep(1.0)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    else:
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    before = {n: m for n, m in trial_files(out).items() if m["state"] in ("complete", "pruned", "failed")}
    assert before
    if killed_worker:
        assert before[min(before)]["state"] == "complete"  # the trial whose worker died ran again, in full
    done = search(path, "--out", out, "--max-concurrent", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming the Ray experiment" in done.stderr
    after = trial_files(out)
    for n, m in before.items():  # nothing finished was lost or redone
        assert after[n]["state"] == m["state"] and after[n].get("val_accuracy") == m.get("val_accuracy")
        assert after[n]["seconds"] == m["seconds"]
    assert sum(m["state"] in ("complete", "pruned", "failed") for m in after.values()) >= 4
    assert "4/4 trials" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    ray_bin = Path(sys.executable).parent / "ray"
    return subprocess.run([str(ray_bin), *args], env=env or CLUSTER_ENV, capture_output=True, text=True,
                          timeout=timeout)


# Ray resolves 127.0.0.1 to the machine's network address for a cluster; another loopback address stays local.
# `ray start --head` turns on token authentication; its token is in ~/.ray/auth_token on this machine.
NODE_IP = "127.0.0.2"
CLUSTER_ENV = {**ENV, "RAY_AUTH_MODE": "token"}


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    """A real two-node Ray cluster on loopback (a head and a second node with its own custom resource): the
    search joins it with --address and trials run on both nodes. The data is a raw image folder: the trials
    prepare it where they run, into the nodes' cache (here one folder both nodes see, as shared storage would be),
    once for both nodes under the cache's lock, and nothing goes through the driver, whose own cache stays empty
    (issue 24, item 4)."""
    port = _free_port()
    photos = conftest.write_image_folder(tmp_path / "photos", per_class=8)
    nodes_env = {**CLUSTER_ENV, "SEARCH_DATA_CACHE": str(tmp_path / "node-cache")}
    driver_env = {**CLUSTER_ENV, "SEARCH_DATA_CACHE": str(tmp_path / "driver-cache")}
    _ray("stop", "--force")
    head = _ray("start", "--head", f"--port={port}", f"--node-ip-address={NODE_IP}", "--num-cpus=1",
                "--resources={\"head_node\": 1}", "--include-dashboard=false", "--disable-usage-stats", env=nodes_env)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = _ray("start", f"--address={NODE_IP}:{port}", f"--node-ip-address={NODE_IP}", "--num-cpus=1",
                      "--resources={\"second_node\": 1}", "--disable-usage-stats", env=nodes_env)
        assert worker.returncode == 0, worker.stderr[-2000:]
        path = write_space(tmp_path, search__trials=4, train__dataset="imagefolder", train__data_dir=str(photos))
        out = tmp_path / "run"
        missing = search(path, "--out", out, "--address", f"{NODE_IP}:{port}", cwd=tmp_path, timeout=120,
                         env=driver_env)
        assert missing.returncode == 2 and "--storage-path" in missing.stderr and "2 nodes" in missing.stderr
        done = search(path, "--out", out, "--address", f"{NODE_IP}:{port}", "--storage-path", tmp_path / "shared",
                      "--max-concurrent", "2", cwd=tmp_path, env=driver_env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "on 2 node(s)" in done.stderr
        files = trial_files(out)
        assert len(files) == 4 and all(m["state"] == "complete" for m in files.values()), files
        nodes = {m["node"] for m in files.values()}
        ids = subprocess.run([sys.executable, "-c", f"import ray, json; ray.init(address='{NODE_IP}:{port}', "
                              "logging_level='ERROR'); print(json.dumps([n['NodeID'] for n in ray.nodes() "
                              "if n['Alive']]))"], env=CLUSTER_ENV, capture_output=True, text=True, timeout=120)
        assert nodes == set(json.loads(ids.stdout.strip().splitlines()[-1])), (nodes, ids.stdout, ids.stderr)
        assert (tmp_path / "shared" / "ray").is_dir()
        entries = [p for p in (tmp_path / "node-cache").iterdir() if p.is_dir()]
        assert len(entries) == 1 and entries[0].name.startswith("imagefolder-photos-8px-"), entries  # prepared once
        assert (entries[0] / "meta.json").is_file()
        driver_cache = tmp_path / "driver-cache"
        assert not driver_cache.exists() or not any(driver_cache.iterdir())  # the driver loaded no data
    finally:
        _ray("stop", "--force")


def _trial_workers() -> list[tuple[int, float]]:
    """(pid, user CPU seconds) of the Ray worker processes running a trial (their title names the trainable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "ImplicitFunc" in title:
                ticks = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[11])
                found.append((int(entry.name), ticks / os.sysconf("SC_CLK_TCK")))
        except (OSError, ValueError, IndexError):
            continue
    return found



def _together(intervals: list[tuple[float, float, int]]) -> list[tuple[int, int]]:
    """(trials running, MiB they requested) at each trial's start, from (start, end, MiB) intervals."""
    return [(sum(1 for s, e, _ in intervals if s <= start < e), sum(mb for s, e, mb in intervals if s <= start < e))
            for start, _, _ in intervals]


@pytest.mark.slow  # ~90 s on the 2-core CI machine; test_trial_resources_follow_the_memory_model is the fast path
def test_gpus_per_trial_auto_packs_trials_by_the_memory_model_on_a_real_cluster(tmp_path):
    """A real local Ray cluster started by hand with 4 CPUs and a made-up card of 6 MiB as the custom resource
    gpu_memory_mb. Each trial asks for the MiB its architecture needs (2-4 for this space); CPUs would let 4 run
    at once, so how many run together is decided by the memory model: never more MiB than the card has.

    The head runs with ``--block`` in its own temp dir and is stopped through that process alone, so other Ray
    clusters on the machine are left alone (no ``ray stop``)."""
    import tempfile

    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}",
                             f"--node-ip-address={NODE_IP}", "--num-cpus=4", "--resources={\"gpu_memory_mb\": 6}",
                             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=CLUSTER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        path = write_space(tmp_path, search__trials=6)
        out = tmp_path / "run"
        deadline = time.monotonic() + 120
        while True:  # the head is up once a search can join it
            done = search(path, "--out", out, "--address", f"{NODE_IP}:{port}", "--gpus-per-trial", "auto",
                          "--device", "cpu", "--max-concurrent", "4", cwd=tmp_path, env=CLUSTER_ENV)
            if done.returncode != 2 or "cannot reach" not in done.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "gpu_memory_mb its architecture needs (at most 6)" in done.stderr
        files = trial_files(out)
        assert len(files) == 6 and all(m["status"] == "ok" for m in files.values())
        intervals = [(m["ray_memory"]["started"], m["ray_memory"]["ended"], m["ray_memory"]["request_mb"])
                     for m in files.values()]
        for m in files.values():  # the request is the memory model's reservation, in whole MiB
            assert m["ray_memory"]["request_mb"] == -(-m["memory"]["reserved_bytes"] // 2**20)
        together = _together(intervals)
        assert all(mb <= 6 for _, mb in together), together
        assert max(n for n, _ in together) >= 2, together  # trials did share the card
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops its own processes
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_trial_resources_follow_the_memory_model(tmp_path):
    """The function of a trial's config that ``tune.with_resources`` calls: the trial's architecture rebuilt from
    its sampled parameters, its reservation by the memory model in whole MiB as gpu_memory_mb, at most the
    largest node's; a GPU share in proportion where the cluster has GPUs."""
    import torch

    from search_space.sampling import RandomSuggester
    from runners.search.packing import trial_need
    from runners.search.ray_engine import META, TrialResources
    from runners.search.trial import Evaluator

    spec = load_spec(write_space(tmp_path))
    cpu = torch.device("cpu")
    evaluator = Evaluator(spec, cpu)
    for seed in range(4):
        suggest = RandomSuggester(seed)
        sampled = evaluator._draw(seed, suggest, None, True)
        params = dict(suggest.params)
        config = {**params, f"{META}trial": seed, f"{META}warm": "", f"{META}in_space": True}
        data = evaluator.data.get(sampled.train, sampled.model.input_size)
        want = -(-trial_need(sampled, data, cpu).reserve // 2**20)
        bundle = TrialResources(spec, cpu, 1.0, 64, None)(config).bundles[0]
        assert bundle == {"CPU": 1.0, "gpu_memory_mb": want}
        assert TrialResources(spec, cpu, 1.0, 2, None)(config).bundles[0]["gpu_memory_mb"] == min(2, want)
        gpu = TrialResources(spec, cpu, 1.0, 64, 8.0)(config).bundles[0]["GPU"]
        assert gpu == pytest.approx(want / 8.0, abs=1e-4)
