"""A run directory is untrusted input (issue 27 items 1 and 6) and the report shows what was searched (issue 26
item 6): ``search report``, ``show`` and ``export`` on hostile run directories give one line and exit 2, never
follow a link out of the directory, never write through one, never embed a file that run.json merely names,
never let a terminal escape through; the report escapes every string it did not write (checked in headless
Chromium by a marker the payloads would set); the trial table and a slice view show every searched value.

The run directories here are written by hand from sampled architectures (no training), as an engine writes them,
so the checks take seconds.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from search_space.cli import main
from search_space.cost import architecture_cost
from search_space.rundir import MAX_DEPTH, RunDir
from search_space.sampling import RandomSuggester, sample
from search_space.schema import SpecError
from search_space.spec import dump_spec, load_spec

from conftest import write_space

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (a FIFO opened for reading) fails the test after 60 s instead of hanging the suite."""
    def alarm(*_):
        raise TimeoutError("hung on a run directory")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def fake_run(root: Path, n: int = 12, backend: str = "ray", seed: int = 0, text: str = "x") -> Path:
    """A run directory as an engine leaves it, for ``n`` complete trials of the tiny space (sampled, not
    trained: their accuracies are made up). ``text`` is put into every free-text field."""
    root.mkdir(parents=True, exist_ok=True)
    space = write_space(root, search__trials=n)
    spec = load_spec(space)
    run = root / "run"
    rng = random.Random(seed)
    names = []
    for i in range(n):
        suggest = RandomSuggester(seed * 1000 + i)
        arch = sample(spec, suggest)
        cost = architecture_cost(arch.model, in_channels=1)
        folder = run / "trials" / str(i)
        folder.mkdir(parents=True)
        (folder / "arch.yaml").write_text(dump_spec(arch))
        acc = round(0.5 + 0.4 * rng.random(), 4)
        blocks = "-".join(b.type for b in arch.model.stages[0].blocks) if arch.model.stages[0].blocks else "plain"
        names.append(blocks)
        (folder / "metrics.json").write_text(json.dumps({
            "trial": i, "state": "complete", "status": "ok", "reason": text, "val_accuracy": acc,
            "params": float(cost.params), "macs": float(cost.macs), "seconds": 1.5, "epochs": 1, "blocks": text,
            "values": {"val_accuracy": acc}, "optuna_params": dict(suggest.params),
            "history": [{"epoch": 1, "val_accuracy": acc}]}))
    (run / "run.json").write_text(json.dumps({
        "name": "tiny", "backend": backend, "spec": str(space), "storage": None, "study_name": "tiny",
        "objectives": ["val_accuracy"], "trials": n, "top": 5, "storage_path": str(run)}))
    return run


def one_line(capsys, code: int) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out.err[-2000:])
    assert "Traceback" not in out.err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------------------------

BAD_JSON = {
    "nan": '{"name": "t", "trials": NaN}',
    "infinity": '{"name": "t", "trials": -Infinity}',
    "float overflow": '{"name": "t", "trials": 1e999}',
    "huge int": '{"name": "t", "trials": ' + "9" * 5000 + "}",
    "int beyond 64 bits": '{"name": "t", "trials": 18446744073709551617}',
    "deep": "[" * 5000 + "]" * 5000,
    "deep mapping": '{"a":' * 3000 + "1" + "}" * 3000,
    "string for number": '{"name": "t", "trials": "20"}',
    "list for mapping": '["name", "t"]',
    "mapping for list": '{"name": "t", "objectives": {"val_accuracy": 1}}',
    "number for name": '{"name": 7}',
    "bool for int": '{"name": "t", "top": true}',
    "unknown backend": '{"name": "t", "backend": "<script>"}',
    "no name": "{}",
    "not json": "name: t",
    "not utf-8": b'{"name": "\xff\xfe"}',
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_run_json_is_checked_like_a_spec(tmp_path, case):
    data = BAD_JSON[case]
    (tmp_path / "run.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(SpecError) as e:
        RunDir(tmp_path).info()
    assert "run.json" in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_metrics_fields_are_typed(tmp_path):
    run = fake_run(tmp_path, n=2)
    m = json.loads((run / "trials/1/metrics.json").read_text())
    for key, bad in (("val_accuracy", "high"), ("values", [1]), ("optuna_params", {"lr": {"x": 1}}),
                     ("state", "<b>"), ("epochs", 1.5), ("io", [1, 2, 3]), ("history", [1])):
        (run / "trials/1/metrics.json").write_text(json.dumps({**m, key: bad}))
        with pytest.raises(SpecError, match=f"trials/1/metrics.json: field '{key}'"):
            RunDir(run).metrics(1)
    assert MAX_DEPTH < 100


def test_a_run_directory_is_read_within_a_total_budget(tmp_path, monkeypatch, capsys):
    import search_space.rundir as R

    run = fake_run(tmp_path, n=6)
    size = sum(len((run / "trials" / str(i) / "metrics.json").read_bytes()) for i in range(6))
    monkeypatch.setattr(R, "MAX_TOTAL_BYTES", size - 1)  # every file within its own limit, not all together
    assert "bytes of run files read" in one_line(capsys, main(["show", str(run)]))
    monkeypatch.setattr(R, "MAX_TOTAL_BYTES", size + 10_000)
    assert main(["show", str(run)]) == 0


def special_file(tmp_path: Path, kind: str, target: Path) -> None:
    """``target`` made into a hostile file of ``kind``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    if kind == "dev_zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "outside":
        outside = tmp_path / "elsewhere" / target.name
        outside.parent.mkdir(exist_ok=True)
        outside.write_text('{"name": "outside"}\n')
        target.symlink_to(outside)
    elif kind == "passwd":
        target.symlink_to("/etc/passwd")
    elif kind == "big":
        with open(target, "wb") as f:
            f.truncate(50_000_000)  # sparse: 50 MB of zeros that take no disk


KINDS = ["dev_zero", "fifo", "outside", "passwd", "big"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["report", "show"])
def test_run_json_special_files(tmp_path, capsys, kind, command):
    run = fake_run(tmp_path, n=2)
    special_file(tmp_path, kind, run / "run.json")
    line = one_line(capsys, main([command, str(run)]))
    assert "run.json" in line


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["report", "show"])
def test_metrics_special_files(tmp_path, capsys, kind, command):
    run = fake_run(tmp_path, n=3)
    special_file(tmp_path, kind, run / "trials/1/metrics.json")
    line = one_line(capsys, main([command, str(run)]))
    assert "trials/1/metrics.json" in line


def test_a_trial_folder_linked_out_of_the_run_is_refused(tmp_path, capsys):
    run = fake_run(tmp_path, n=3)
    shutil.move(run / "trials/2", tmp_path / "moved")
    (run / "trials/2").symlink_to(tmp_path / "moved")
    assert "link out of the run directory" in one_line(capsys, main(["report", str(run)]))
    # a link that stays inside the run directory is fine
    (run / "trials/2").unlink()
    shutil.move(tmp_path / "moved", run / "kept")
    (run / "trials/2").symlink_to(run / "kept")
    assert main(["show", str(run)]) == 0


@pytest.mark.parametrize("case", ["nan", "huge int", "deep", "string for number", "list for mapping"])
@pytest.mark.parametrize("command", ["report", "show"])
def test_damaged_json_exits_2(tmp_path, capsys, case, command):
    run = fake_run(tmp_path, n=3)
    (run / "run.json").write_text(BAD_JSON[case])
    assert "run.json" in one_line(capsys, main([command, str(run)]))
    run = fake_run(tmp_path / "m", n=3)
    text = BAD_JSON[case].replace('"name": "t", "trials"', '"trial": 1, "seconds"')
    (run / "trials/1/metrics.json").write_text(text)
    assert "metrics.json" in one_line(capsys, main([command, str(run)]))


@pytest.mark.parametrize("kind", KINDS)
def test_export_reads_through_the_reader(tmp_path, capsys, kind):
    run = fake_run(tmp_path, n=2)
    (run / "best.yaml").write_text((run / "trials/0/arch.yaml").read_text())
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    capsys.readouterr()
    special_file(tmp_path, kind, run / "best.yaml")
    line = one_line(capsys, main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "n.pt")]))
    assert "best.yaml" in line
    # final/weights.pt linked out of the run is refused too, not loaded
    (run / "best.yaml").unlink()
    (run / "final").mkdir()
    (run / "final/arch.yaml").write_text((run / "trials/0/arch.yaml").read_text())
    (run / "final/weights.pt").symlink_to(tmp_path / "m.pt")
    assert "weights.pt" in one_line(capsys, main(["export", str(run), "--format", "torchscript", "--out",
                                                  str(tmp_path / "o.pt")]))


def test_export_of_a_pareto_run_with_a_damaged_run_json(tmp_path, capsys):
    run = fake_run(tmp_path, n=2)
    (run / "pareto").mkdir()
    (run / "pareto/trial_0.yaml").write_text((run / "trials/0/arch.yaml").read_text())
    (run / "run.json").write_text('{"name": "t", "objectives": [NaN]}')
    assert "run.json" in one_line(capsys, main(["export", str(run), "--format", "torchscript", "--out",
                                                str(tmp_path / "m.pt")]))
    (run / "best.yaml").write_text((run / "trials/0/arch.yaml").read_text())  # not needed, still checked
    for bad in ('{"name": "t", "trials": 1e999}', "[" * 5000 + "]" * 5000, '{"name": ["t"]}'):
        (run / "run.json").write_text(bad)
        assert "run.json" in one_line(capsys, main(["export", str(run), "--format", "torchscript", "--out",
                                                    str(tmp_path / "m.pt")]))
    special_file(tmp_path, "fifo", run / "run.json")
    assert "run.json" in one_line(capsys, main(["export", str(run), "--format", "torchscript", "--out",
                                                str(tmp_path / "m.pt")]))


def test_show_never_sends_terminal_escapes(tmp_path, capsys):
    escape = "\x1b]0;owned\x07\x1b[2J\x9b31m\r"
    run = fake_run(tmp_path, n=3, text=escape)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "name": "tiny" + escape, "storage_path": escape}))
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "\\x1b" in out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)


# ----------------------------------------------------------------------------------------------------------------
# The report writes only its own files, only inside the run, and embeds only the run's own files
# ----------------------------------------------------------------------------------------------------------------


def test_report_writes_and_embeds_only_inside_its_run(tmp_path):
    from runners.report.page import _spec_text, write_report

    run = fake_run(tmp_path, n=6)
    victims = {}
    for name in ("report.html", "history.png", "pareto.png", "slice.png"):
        victim = tmp_path / f"victim_{name}"
        victim.write_text("precious")
        (run / name).symlink_to(victim)
        victims[name] = victim
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "spec": "/etc/passwd"}))
    page = write_report(run, n_boot=20)["html"].read_text()
    for name, victim in victims.items():  # the links were replaced, their targets left alone
        assert victim.read_text() == "precious", name
        assert not (run / name).is_symlink() and (run / name).stat().st_size > 1000, name
    assert not list(run.glob(".*.tmp*"))
    assert "root:x:0" not in page and "never a path that run.json names" in page

    secret = tmp_path / "secret.yaml"
    secret.write_text("name: topsecret-content\n")
    rd = RunDir(run)
    for named in (str(secret), "../secret.yaml", "secret.yaml", {"name": "inline"}):
        source, text = _spec_text(rd, {**info, "spec": named})
        assert "topsecret-content" not in text, named
    assert "inline" in _spec_text(rd, {**info, "spec": {"name": "inline"}})[1]
    # the copy that `search run` keeps inside the run directory is what a report shows
    (run / "spec.yaml").write_text("name: the-run-copy\n")
    assert _spec_text(rd, {**info, "spec": "/etc/passwd"}) == ("spec.yaml", "name: the-run-copy\n")
    # and a spec.yaml that links out of the run is refused with one line
    (run / "spec.yaml").unlink()
    (run / "spec.yaml").symlink_to(secret)
    with pytest.raises(SpecError, match="spec.yaml: a link out of the run directory"):
        _spec_text(rd, info)


# ----------------------------------------------------------------------------------------------------------------
# Script payloads in every string field, rendered in headless Chromium
# ----------------------------------------------------------------------------------------------------------------

MARK = "data-pwned"
PAYLOADS = [
    "<script>document.documentElement.setAttribute('data-pwned','script')</script>",
    "</script><script>document.documentElement.setAttribute('data-pwned','close')</script>",
    "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">",
    "'><svg onload=document.documentElement.setAttribute('data-pwned','svg')>",
    "\"><iframe srcdoc=\"<script>parent.document.documentElement.setAttribute('data-pwned','iframe')</script>\">",
    "<a href=\"javascript:document.documentElement.setAttribute('data-pwned','href')\">x</a>",
    "<b onmouseover=alert(1)>bold</b><details open ontoggle=\"document.documentElement.setAttribute("
    "'data-pwned','toggle')\">",
]


def hostile_run(tmp_path: Path) -> Path:
    """A run directory whose every string field (and every key that names something) holds script payloads."""
    run = fake_run(tmp_path, n=8, text=" ".join(PAYLOADS))
    p = iter(PAYLOADS * 40)
    for i in range(8):
        path = run / "trials" / str(i) / "metrics.json"
        m = json.loads(path.read_text())
        m["status"] = next(p)
        m["optuna_params"] = {**{k: v for k, v in m["optuna_params"].items()}, next(p): next(p),
                              next(p): 0.5 + i}
        m["distributions"] = {k: next(p) for k in m["optuna_params"]}  # not distributions: inferred instead
        m["values"][next(p)] = 1.0 * i
        m["warm_start"] = next(p)
        if i == 7:  # a trial without an architecture: listed with its payloads, not drawn
            m["state"] = "failed"
            (path.parent / "arch.yaml").write_text(f"name: {json.dumps(next(p))}\nmodel: {json.dumps(next(p))}\n")
        path.write_text(json.dumps(m))
    info = json.loads((run / "run.json").read_text())
    info.update(name=next(p), study_name=next(p), spec=next(p), storage=next(p), storage_path=next(p),
                experiment=next(p), address=next(p), objectives=["val_accuracy", next(p)])
    info[next(p)] = next(p)
    for i in range(7):
        path = run / "trials" / str(i) / "metrics.json"
        m = json.loads(path.read_text())
        m["values"][info["objectives"][1]] = float(i)
        path.write_text(json.dumps(m))
    (run / "run.json").write_text(json.dumps(info))
    (run / "spec.yaml").write_text("\n".join(f"# {x}" for x in PAYLOADS) + "\nname: t\n")
    return run


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; `apt-get install -y chromium` (.ci/run does it)")
    return exe


def test_report_runs_no_payload_in_headless_chromium(tmp_path):
    from runners.report.page import write_report

    run = hostile_run(tmp_path)
    result = write_report(run, n_boot=20)
    page = result["html"].read_text()
    import plotly.offline

    ours = page.replace(plotly.offline.get_plotlyjs(), "")  # the page without the library's own source
    assert ours.count("<script") == 2 + result["plots"]  # plotly.js, the sorter, one per figure: ours only
    raw = [tag for tag in ("<img", "<svg", "<iframe", "<a ", "<details open", "<b ") if tag in ours]
    assert not raw, raw
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
    # open every folded <details> first, so a toggle handler or a lazily drawn figure would run too
    opened = run / "opened.html"
    # and hover over points of every figure (plotly draws hover labels, with their text, only then)
    opened.write_text(page.replace("<details", "<details open").replace("</body>", (
        "<script>const hovers=[];for(const gd of document.querySelectorAll('.plotly-graph-div'))"
        "(gd.data||[]).forEach((tr,i)=>{const n=Math.min(4,(tr.x||[]).length);"
        "for(let j=0;j<n;j++)hovers.push([gd,i,j])});let k=0;"
        "function next(){if(k>=hovers.length||k>=150){document.documentElement.setAttribute('data-rendered',"
        "'yes');return}const [gd,i,j]=hovers[k++];try{Plotly.Fx.hover(gd,[{curveNumber:i,pointNumber:j}])}"
        "catch(e){}setTimeout(next,60)}window.addEventListener('load',()=>setTimeout(next,100));"
        "for (const d of document.querySelectorAll('[onmouseover]')) d.dispatchEvent(new Event('mouseover'));"
        "</script></body>")))
    dom = subprocess.run(flags + ["--dump-dom", opened.resolve().as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    assert 'data-rendered="yes"' in dom, dom[-2000:]  # the page ran its own scripts to the end
    assert 'class="hovertext"' in dom  # a hover label was drawn
    assert dom.count('class="main-svg"') >= result["plots"]  # plotly drew every figure
    assert MARK + "=" not in dom, re.findall(MARK + r'="[^"]*"', dom)
    assert "document.documentElement.setAttribute" in dom  # the payloads are there, as text


# ----------------------------------------------------------------------------------------------------------------
# What was searched (issue 26 item 6)
# ----------------------------------------------------------------------------------------------------------------


def test_report_shows_every_searched_value_and_folds_the_design_space(tmp_path):
    from runners.report import edf as E
    from runners.report.page import design_section, write_report

    run = fake_run(tmp_path, n=20)
    for i in range(20):  # a parameter whose name would be mathtext in a matplotlib label
        path = run / "trials" / str(i) / "metrics.json"
        m = json.loads(path.read_text())
        m["optuna_params"][r"$\frac{1}{0}$"] = 0.001 * (i + 1)
        path.write_text(json.dumps(m))
    result = write_report(run, n_boot=20)
    page = result["html"].read_text()
    params = set()
    for i in range(20):
        params |= set(json.loads((run / "trials" / str(i) / "metrics.json").read_text())["optuna_params"])
    assert "train.lr" in params and "stages.0.depth" in params
    table = page[page.index("<table id=trials"):]
    table = table[:table.index("</table>")]
    for name in params:
        assert f">{name}</th>" in table, name
    lr = json.loads((run / "trials/3/metrics.json").read_text())["optuna_params"]["train.lr"]
    assert f">{lr:.4g}</td>" in table
    # the slice view: one trace per parameter, picked from a menu; a PNG of the continuous ones
    assert "Searched values" in page and '"updatemenus"' in page
    assert (run / "slice.png").read_bytes()[:4] == b"\x89PNG" and run / "slice.png" in result["png"]

    # the design-space rule is computed, and says what it claims: 3 of 4 beating the median is told from 0.5
    need = E.min_design_trials()
    m = E.trials_to_tell()
    assert E.share_interval(0.75, m)[0] > 0.5 >= E.share_interval(0.75, m - 1)[0]
    assert need == E.DESIGN_VALUES * m and 20 < need < 100
    # at the shipped budget of 20: a note, the rule, the panels folded away, no findings
    assert "Too few trials to read:</b> 20 complete, fewer than " + str(need) in page
    assert f"read this section from {need} complete trials on" in page
    assert "<details><summary>show the design-space view anyway" in page and "<h2>Findings" not in page
    assert result["choices"]  # the views exist, folded
    # from the rule on, the same views unfolded
    from runners.report.page import choice_view, informative, read_trials

    done = [t for t in read_trials(run) if t.arch is not None]
    errors = np.array([t.error for t in done])
    views = [choice_view(label, {v: np.array(i) for v, i in groups.items()}, errors, {"params": None, "macs": None},
                         20) for label, groups in informative(done).items()]
    section = design_section(views, need)
    assert "Too few trials to read" not in section and "show the design-space view anyway" not in section
    assert f"read this section from {need}" in section and "<table class=effects>" in section


def test_rows_are_ordered_by_reliability():
    from runners.report import edf as E

    clear_small = E.Effect("a", 40, 0.1, 0.7, 0.58, 0.8)     # helps, interval 0.08 above 0.5
    clear_big = E.Effect("b", 6, 0.1, 0.99, 0.7, 1.0)         # a bigger raw effect on few trials, 0.2 above
    unclear = E.Effect("c", 30, 0.1, 0.55, 0.45, 0.65)
    few = E.Effect("d", 3, 0.1, 1.0, 0.6, 1.0)                  # the biggest raw effect: 3 of 3
    hurts = E.Effect("e", 20, 0.1, 0.2, 0.1, 0.35)
    order = sorted([few, unclear, clear_small, clear_big, hurts], key=E.reliability)
    assert [e.value for e in order] == ["b", "e", "a", "c", "d"]


def test_history_and_pngs_carry_the_objective_and_whole_trials(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from runners.report import page as P

    seen = {}

    def capture(fig, run, name):
        ax = fig.axes[0]
        seen[name] = (ax.get_xlabel(), ax.get_ylabel(), [t for t in ax.get_xticks()])
        return Path(name)

    monkeypatch.setattr(P, "save_png", capture)
    run = fake_run(tmp_path, n=7)
    trials = P.read_trials(run)
    study = P.rebuilt_study(trials, ["val_accuracy"])
    fig, _ = P.history_figures(study, ["val_accuracy"], RunDir(run))
    xlabel, ylabel, ticks = seen["history.png"]
    assert (xlabel, ylabel) == ("trial", "validation accuracy")
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert fig.layout.yaxis.title.text == "validation accuracy" and fig.layout.xaxis.title.text == "trial"
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    assert "Objective Value" not in fig.to_json()
    fig, _ = P.slice_figures(trials, ["val_accuracy"], P.searched_params(trials), RunDir(run))
    assert seen["slice.png"][1] == "validation accuracy"
    assert fig.layout.yaxis.title.text == "validation accuracy"
