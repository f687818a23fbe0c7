"""A tiny real audit (3 architectures, 1-epoch proxy, synthetic data) that is interrupted and resumes."""

import dataclasses
import io
import json
import time

import pytest

import runners.training.loop
from runners.audit.fidelity import Audit, draw_architectures, plan_runs
from runners.common.progress import Progress
from search_space.schema import SpecError
from search_space.spec import load_spec

from conftest import ROOT


def tiny_spec():
    spec = load_spec(ROOT / "spaces" / "resnest.yaml")
    train = dataclasses.replace(spec.train, dataset="synthetic", synthetic_samples=100, epochs=1, batch_size=32,
                                image_size=8, device="cpu")
    return dataclasses.replace(spec, train=train)


def test_draw_is_seeded_feasible_and_in_budget():
    spec = dataclasses.replace(tiny_spec(), search=dataclasses.replace(tiny_spec().search, max_params=2.0e5))
    first = draw_architectures(spec, 4, channels=3, num_classes=10, seed=5)
    again = draw_architectures(spec, 4, channels=3, num_classes=10, seed=5)
    assert [a.model for a in first] == [a.model for a in again]
    from search_space.cost import architecture_cost

    assert all(architecture_cost(a.model, input_size=16, in_channels=3, num_classes=10).params <= 2.0e5
               for a in first)
    assert len({str(a.model) for a in first}) == 4
    assert all((a.model.in_channels, a.model.num_classes) == (3, 10) for a in first)  # models/<i>/arch.yaml compiles


def test_plan_runs_proxies_first_then_long_runs_seed_by_seed():
    runs = plan_runs(2, proxy_epochs=3, factor=4, seeds=2, base_seed=7)
    assert [(r.model, r.kind, r.epochs, r.seed) for r in runs] == [
        (0, "proxy", 3, 7), (1, "proxy", 3, 7), (0, "long", 12, 7), (1, "long", 12, 7),
        (0, "long", 12, 8), (1, "long", 12, 8)]


def test_audit_resumes_after_interruption(tmp_path, monkeypatch, single_thread, capsys):
    real_train = runners.training.loop.train
    calls = []

    def interrupted_after_four(*args, **kwargs):
        calls.append(kwargs["config"] if "config" in kwargs else args[1])
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a Ctrl-C (or a kill) in the middle of the fifth run
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runners.training.loop, "train", interrupted_after_four)
    quiet = Progress(tty=False, stream=io.StringIO())
    with pytest.raises(KeyboardInterrupt):
        Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=2, progress=quiet).run()
    done = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("models/*/*.json"))
    assert done == ["models/0/long-e2-s0.json", "models/0/proxy-e1-s0.json", "models/1/proxy-e1-s0.json",
                    "models/2/proxy-e1-s0.json"]
    before = {p: (tmp_path / p).read_text() for p in done}

    calls.clear()
    monkeypatch.setattr(runners.training.loop, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    report = Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=2, progress=quiet).run()
    assert len(calls) == 5  # only the runs not finished before the interruption
    assert {p: (tmp_path / p).read_text() for p in done} == before
    assert report["complete"] and report["n"] == 3
    assert set(report["predictors"]) == {"proxy", "long_at_epoch_1", "params", "macs"}
    assert "noise_ceiling" in report
    # the bound on any search's gain, at the space's trial count and at a half and a quarter of it
    trials = tiny_spec().search.trials
    assert [h["trials"] for h in report["search_headroom"]] == sorted({max(1, trials // 4), max(1, trials // 2),
                                                                        trials})
    assert all(h["headroom"] >= -1e-3 for h in report["search_headroom"])  # a resampled mean: about 0 at least
    for row in report["models"]:
        record = json.loads((tmp_path / "models" / str(row["model"]) / "long-e2-s1.json").read_text())
        assert record["epochs"] == 2 and len(record["history"]) == 2
        assert row["long"][1] == record["val_accuracy"]
        assert row["truncated"] == json.loads(
            (tmp_path / "models" / str(row["model"]) / "long-e2-s0.json").read_text())["history"][0]
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved["predictors"]["proxy"]["spearman_ci"][0] <= saved["predictors"]["proxy"]["spearman_ci"][1]
    assert (tmp_path / "fidelity.png").stat().st_size > 0

    assert report["devices"] == {"cpu": 9}  # each run records the hardware it trained on

    calls.clear()  # a third run finds everything done and trains nothing
    Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=2, progress=quiet).run()
    assert calls == []

    path = tmp_path / "models" / "1" / "long-e2-s1.json"
    record = json.loads(path.read_text())

    def rerun(**changes):
        path.write_text(json.dumps({k: v for k, v in {**record, **changes}.items() if v is not None}))
        stream = io.StringIO()
        report = Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=2, progress=Progress(tty=False, stream=stream)).run()
        return report["devices"], "several devices" in capsys.readouterr().out  # the summary: on stdout

    assert rerun() == ({"cpu": 9}, False)
    assert rerun(device=None) == ({"cpu": 8, "unrecorded": 1}, False)  # a run from before runs recorded it
    # one run trained by a process on a GPU machine sharing the directory: the summary says the hardware differs
    assert rerun(device="cuda") == ({"cpu": 8, "cuda": 1}, True) and calls == []
    stream = io.StringIO()
    Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=2, progress=Progress(tty=False, stream=stream)).run()
    assert "runs trained on several devices (8 on cpu, 1 on cuda)" in capsys.readouterr().out


def test_processes_sharing_an_audit_split_the_runs_and_rungs_are_reported(tmp_path, single_thread):
    """A run another process holds (its flock) is skipped, not trained twice; with a 2-epoch proxy the report
    also ranks what a pruner sees at its rung: the proxy run after epoch 1."""
    import fcntl
    import os

    spec = dataclasses.replace(tiny_spec(), train=dataclasses.replace(tiny_spec().train, epochs=2))
    (tmp_path / "models" / "0").mkdir(parents=True)
    held = os.open(tmp_path / "models" / "0" / "proxy-e2-s0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # as another process training model 0's proxy run
    stream = io.StringIO()
    report = Audit(spec, tmp_path, n=3, factor=2, seeds=1, progress=Progress(tty=False, stream=stream)).run()
    assert not (tmp_path / "models" / "0" / "proxy-e2-s0.json").exists()
    assert (tmp_path / "models" / "0" / "long-e4-s0.json").exists()
    assert "1 runs are still being trained by another process" in stream.getvalue() and not report["complete"]
    os.close(held)

    report = Audit(spec, tmp_path, n=3, factor=2, seeds=1, progress=Progress(tty=False, stream=io.StringIO())).run()
    assert report["complete"]
    assert set(report["predictors"]) == {"proxy", "proxy_at_epoch_1", "long_at_epoch_2", "params", "macs"}
    for row in report["models"]:
        proxy = json.loads((tmp_path / "models" / str(row["model"]) / "proxy-e2-s0.json").read_text())
        assert row["rungs"] == [proxy["history"][0]]
        long = json.loads((tmp_path / "models" / str(row["model"]) / "long-e4-s0.json").read_text())
        assert row["long_rungs"] == long["history"][:3]
    # every epoch of the long schedule as a rung; the cut at the proxy's length is long_at_epoch_2 itself
    assert list(report["long_rung_at_epoch"]) == ["1", "2", "3"]
    assert report["long_rung_at_epoch"]["2"] == pytest.approx(report["predictors"]["long_at_epoch_2"]["spearman"])


def test_workers_share_the_audit_and_train_each_run_once(tmp_path, monkeypatch, single_thread, capfd):
    """--workers 2: a spawned worker process trains runs beside this one; no run is trained twice. This process
    waits for the worker's first run before it trains, so both take part however fast the runs are."""
    real_train = Audit._train
    waited = []

    def after_the_workers_first_run(self, r, head):
        while not waited and not any(json.loads(p.read_text()).get("worker") == 1
                                     for p in tmp_path.glob("models/*/*-s*.json")):
            assert time.monotonic() - start < 120, "the worker process trained nothing"
            time.sleep(0.05)
        waited.append(r)
        return real_train(self, r, head)

    monkeypatch.setattr(Audit, "_train", after_the_workers_first_run)
    stream = io.StringIO()
    start = time.monotonic()
    report = Audit(tiny_spec(), tmp_path, n=4, factor=2, seeds=2, workers=2,
                   progress=Progress(tty=False, stream=stream)).run(threads=1)
    assert report["complete"] and report["n"] == 4
    records = [json.loads(p.read_text()) for p in tmp_path.glob("models/*/*-s*.json")]
    assert len(records) == 12  # 4 proxies + 4 x 2 long runs
    assert {r["worker"] for r in records} == {0, 1}
    by_worker = capfd.readouterr().err.count("[worker 1] [")  # one line per run the worker trained
    assert by_worker >= 1 and len(waited) + by_worker == 12  # each run trained once
    assert "2 workers" in stream.getvalue()
    assert not list(tmp_path.glob("models/*/*.tmp*"))


@pytest.mark.parametrize("flag, value, field", [("--n", "2", "--n"), ("--factor", "1", "--factor"),
                                                ("--seeds", "0", "--seeds"), ("--epochs", "0", "--epochs"),
                                                ("--workers", "0", "--workers")])
def test_bad_flags_exit_2_with_one_line(cli, tmp_path, flag, value, field):
    r = cli("fidelity", ROOT / "spaces" / "resnest.yaml", flag, value, "--out", tmp_path)
    assert r.code == 2
    assert r.err.count("\n") == 1 and field in r.err and value in r.err


@pytest.mark.parametrize("other", ["finishes", "stops"])
def test_runs_another_process_held_are_reported_by_what_became_of_them(tmp_path, single_thread, monkeypatch, other):
    """Skipped because another process held it; that process then finishes the run before this one ends (the
    audit is complete, no 'rerun' line) or stops without it (the run is missing, and the line says so)."""
    import fcntl
    import os
    import shutil

    spec = tiny_spec()
    (tmp_path / "models" / "0").mkdir(parents=True)
    held = os.open(tmp_path / "models" / "0" / "proxy-e1-s0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # as another process training model 0's proxy run
    train_one = Audit._train

    def meanwhile(self, r, head):
        result = train_one(self, r, head)
        if r.model == 1 and r.kind == "proxy":  # meanwhile, "the other process" finishes or stops
            if other == "finishes":
                shutil.copy(tmp_path / "models" / "1" / "proxy-e1-s0.json",
                            tmp_path / "models" / "0" / "proxy-e1-s0.json")
            os.close(held)
        return result

    monkeypatch.setattr(Audit, "_train", meanwhile)
    stream = io.StringIO()
    report = Audit(spec, tmp_path, n=3, factor=2, seeds=1, progress=Progress(tty=False, stream=stream)).run()
    out = stream.getvalue()
    assert "being trained by another process" not in out
    if other == "finishes":
        assert report["complete"] and "missing" not in out
    else:
        assert not report["complete"] and "1 runs are missing (another process stopped" in out


def test_results_go_to_stdout_top_k_is_capped_below_n_and_every_axis_is_labelled(tmp_path, cli, single_thread,
                                                                                 monkeypatch):
    """Issue 26 item 7: `search fidelity > figures.txt` gets the figures, the terminal keeps the progress."""
    import matplotlib.figure

    from search_space.spec import dump_spec

    space = tmp_path / "space.yaml"
    space.write_text(dump_spec(tiny_spec()))
    labels = []
    savefig = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        labels.extend((ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    r = cli("fidelity", space, "--n", 3, "--factor", 2, "--seeds", 2, "--top-k", 9, "--out", tmp_path / "audit")
    assert r.code == 0, r.err
    assert "Spearman" in r.out and "fidelity of" in r.out and "Spearman" not in r.err
    assert "fidelity resnest:" not in r.out and "fidelity resnest:" in r.err  # progress on stderr only
    report = json.loads((tmp_path / "audit" / "fidelity.json").read_text())
    assert {a["top_k"] for a in report["predictors"].values()} == {2}  # --top-k 9 of 3 architectures: capped at 2
    assert labels and all(x and y for x, y in labels), labels
    assert any("proxy val accuracy (1 epochs)" in x for x, _ in labels)
    assert cli("fidelity", space, "--n", 3, "--top-k", 0, "--out", tmp_path / "other").code == 2


def test_a_directory_holding_another_audit_is_refused_not_mixed_in(tmp_path, cli):
    """Runs are read back by file name alone, so resuming into another space's, dataset's or recipe's audit would
    score its runs as this audit's; more seeds or architectures than before resume the same audit."""
    quiet = Progress(tty=False, stream=io.StringIO())
    Audit(tiny_spec(), tmp_path, n=3, factor=2, seeds=1, progress=quiet)._prepare(write=True)
    Audit(tiny_spec(), tmp_path, n=4, factor=2, seeds=2, progress=quiet)._prepare(write=True)  # grows: fine
    before = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}

    other_data = dataclasses.replace(tiny_spec(), train=dataclasses.replace(tiny_spec().train, synthetic_samples=120,
                                                                            image_size=12))
    with pytest.raises(SpecError, match=r"models/0/arch\.yaml is not the architecture this audit draws"):
        Audit(other_data, tmp_path, n=4, factor=2, seeds=2, progress=quiet)._prepare(write=True)
    for flags, said in [(["--epochs", "2", "--factor", "2"], "proxy_epochs 1, not 2"),
                        (["--epochs", "1", "--factor", "3"], "factor 2, not 3")]:
        r = cli("fidelity", ROOT / "spaces" / "resnest.yaml", *flags, "--out", tmp_path)
        assert r.code == 2 and r.err.count("\n") == 1, r.err
        assert "--out" in r.err and said in r.err and str(tmp_path) in r.err
    r = cli("fidelity", ROOT / "spaces" / "resnet.yaml", "--epochs", "1", "--factor", "2", "--out", tmp_path)
    assert r.code == 2 and "space 'resnest', not 'resnet'" in r.err
    assert {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or lost
