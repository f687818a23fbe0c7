"""search report: the EDF maths against hand computations, and a real report of a real (tiny) search, opened in
headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from runners.report import edf as E
from runners.report.page import pareto_mask, write_report
from search_space.cli import main

from conftest import write_space

# ---------------------------------------------------------------------------------------------------------------
# EDF maths on a small fixed set of trials
# ---------------------------------------------------------------------------------------------------------------

ERRORS = np.array([0.10, 0.20, 0.20, 0.40, 0.30, 0.50])
PARAMS = np.array([1e3, 1e3, 1e5, 1e5, 1e3, 1e5])   # two buckets: small (0, 1, 4) and large (2, 3, 5)
GROUPS = {"sk": np.array([0, 1, 2, 3]), "se": np.array([4, 5])}


def test_edf_counts_errors_strictly_below():
    # errors 0.1 0.2 0.2 0.4 0.3 0.5: below 0.2 -> one of six; below 0.25 -> three; below 0.45 -> five
    assert E.edf(ERRORS, [0.05, 0.2, 0.25, 0.45, 0.6]).tolist() == pytest.approx([0, 1 / 6, 3 / 6, 5 / 6, 1])
    # weighted: weights 1, 1, 2, 0 on 0.1, 0.2, 0.2, 0.4 -> below 0.15: 1/4, below 0.3: (1 + 1 + 2)/4
    assert E.edf([0.1, 0.2, 0.2, 0.4], [0.15, 0.3], [1, 1, 2, 0]).tolist() == pytest.approx([0.25, 1.0])


def test_buckets_split_log_complexity_at_quantiles():
    assert E.buckets(PARAMS, 2).tolist() == [0, 0, 1, 1, 0, 1]
    assert E.buckets([1, 10, 100, 1000], 4).tolist() == [0, 1, 2, 3]


def test_matched_weights_make_every_shared_bucket_count_equally():
    w = E.matched_weights(GROUPS, E.buckets(PARAMS, 2))
    # sk: small bucket holds trials 0, 1 (1/(2*2) each), large holds 2, 3 (1/4 each); se: one per bucket (1/2)
    assert w["sk"].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25])
    assert w["se"].tolist() == pytest.approx([0.5, 0.5])
    # a bucket that one group never reaches is dropped for all: se only small -> sk keeps its small trials
    w = E.matched_weights({"sk": [0, 1, 2, 3], "se": [4]}, E.buckets(PARAMS, 2))
    assert w["sk"].tolist() == pytest.approx([0.5, 0.5, 0, 0]) and w["se"].tolist() == [1.0]


def test_matched_edf_by_hand():
    # sk's small trials (errors 0.1, 0.2) weigh 1/2 each once se (small only) limits the comparison to them:
    # F_sk(0.15) = 0.5, F_sk(0.25) = 1; the unmatched EDF of sk at 0.25 is 3/4.
    w = E.matched_weights({"sk": [0, 1, 2, 3], "se": [4]}, E.buckets(PARAMS, 2))
    assert E.edf(ERRORS[[0, 1, 2, 3]], [0.15, 0.25], w["sk"]).tolist() == pytest.approx([0.5, 1.0])
    assert E.edf(ERRORS[[0, 1, 2, 3]], [0.25]).tolist() == pytest.approx([0.75])


def test_effects_by_hand():
    # median error of the six is 0.25: sk has 3 of 4 below (0.1, 0.2, 0.2), se none of 2 (0.3, 0.5)
    eff = {e.value: e for e in E.effects(ERRORS, GROUPS)}
    assert eff["sk"].share_below_median == pytest.approx(0.75) and eff["sk"].trials == 4
    assert eff["se"].share_below_median == 0.0 and eff["se"].median_error == pytest.approx(0.4)
    # Jeffreys 90% interval of 3 of 4: Beta(3.5, 1.5) quantiles 0.05 and 0.95
    from scipy.stats import beta

    assert (eff["sk"].low, eff["sk"].high) == pytest.approx((beta.ppf(0.05, 3.5, 1.5), beta.ppf(0.95, 3.5, 1.5)))
    assert eff["sk"].verdict == "too few trials" and eff["se"].verdict == "too few trials"  # fewer than 5
    errors = [0.10, 0.12, 0.14, 0.16, 0.50, 0.30, 0.40, 0.45]  # median (0.16 + 0.30) / 2 = 0.23
    five = {e.value: e for e in E.effects(errors, {"a": [0, 1, 2, 3, 6], "b": [4, 5, 7]})}
    assert five["a"].share_below_median == pytest.approx(0.8)  # 0.10 0.12 0.14 0.16 below, 0.40 not
    assert five["a"].verdict == "no clear effect"  # Jeffreys interval of 4 of 5 reaches below 0.5
    many = np.r_[np.full(10, 0.1), np.full(10, 0.5)]
    eff = {e.value: e for e in E.effects(many, {"a": np.arange(10), "b": np.arange(10, 20)})}
    assert eff["a"].verdict == "helps" and eff["b"].verdict == "hurts"
    assert E.effective_n([0.25, 0.25, 0.5]) == pytest.approx(1 / 0.375)


def test_bootstrap_band_brackets_the_edf():
    grid = np.linspace(0, 0.6, 13)
    f = E.edf(ERRORS, grid)
    low, high = E.bootstrap_band(ERRORS, grid, n_boot=300)
    assert np.all(low <= f + 1e-12) and np.all(f <= high + 1e-12) and np.any(high - low > 0.2)
    low, high = E.bootstrap_band(np.full(5, 0.3), grid)  # no spread, no band
    assert np.array_equal(low, high) and np.array_equal(low, E.edf(np.full(5, 0.3), grid))


def test_pareto_mask_by_hand():
    # (params, accuracy): (1, .5) (2, .4) (2, .7) (3, .6) (4, .9) -> front (1, .5) (2, .7) (4, .9)
    assert pareto_mask([1, 2, 2, 3, 4], [0.5, 0.4, 0.7, 0.6, 0.9]).tolist() == [True, False, True, False, True]


# ---------------------------------------------------------------------------------------------------------------
# A real run
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from runners.search.optuna_engine import run_search
    from runners.common.progress import Progress
    from search_space.spec import load_spec

    tmp = tmp_path_factory.mktemp("report")
    space = write_space(tmp, train__epochs=1, search__trials=10)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_search(load_spec(space), tmp / "run", spec_path=str(space),
                   progress=Progress(stream=io.StringIO(), tty=False))
    finally:
        torch.set_num_threads(before)
    return tmp / "run"


def test_report_writes_html_and_pngs(run_dir):
    result = write_report(run_dir, n_boot=100)
    page = result["html"].read_text()
    assert result["html"] == run_dir / "report.html"
    for name in ("history.png", "pareto.png", "importances.png", "edf_block_type_any_stage.png"):
        assert (run_dir / name).stat().st_size > 5000, name
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    assert "block type (any stage)" in result["choices"]
    # offline: plotly.js is inline and nothing is loaded from elsewhere
    assert not re.search(r"<script[^>]+src=", page) and "<link" not in page
    assert "Plotly.newPlot" in page and len(page) > 3_000_000
    for part in ("Too few trials to read", "Searched values", "Pareto front", "Parameter importances", "Design space", "matched params",
                 "sortTable", "Block diagrams", "stage 0", "name: tiny"):
        assert part in page, part
    for n in range(10):
        assert f"trial {n}:" in page


def test_report_without_an_optuna_study(run_dir, tmp_path):
    """A run without a readable Optuna storage (a Ray run) reports from its files, with a rebuilt study."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("study.db", "report.html", "*.png"))
    info = json.loads((copy / "run.json").read_text())
    info.update(backend="ray", storage=None)
    (copy / "run.json").write_text(json.dumps(info))
    # and a trial that failed before it had an architecture (an infeasible sample) is listed, not plotted
    (copy / "trials" / "99").mkdir()
    (copy / "trials" / "99" / "metrics.json").write_text(json.dumps(
        {"trial": 99, "state": "failed", "status": "infeasible", "reason": "stages.0.width: too narrow",
         "optuna_params": {}, "values": {}}))
    result = write_report(copy, n_boot=50)
    page = result["html"].read_text()
    assert "rebuilt from trials/*/metrics.json" in page and (copy / "importances.png").exists()
    assert "1 failed" in page and "stages.0.width: too narrow" in page


def test_report_cli_and_bad_run(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json" in err[0]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; `apt-get install -y chromium` (.ci/run does it)")
    return exe


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    from PIL import Image

    result = write_report(run_dir, n_boot=50)
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]
    url = result["html"].resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    # every plotly figure draws an SVG root ("main-svg") once rendered; none is drawn if plotly.js failed
    figures = dom.count('class="plotly-graph-div')
    assert figures == result["plots"] >= 4
    assert dom.count('class="main-svg"') >= figures
    assert dom.count('class="scatterlayer') >= figures - 1  # the bar chart of importances has none
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2400", url],
                   capture_output=True, timeout=180)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1200)
    assert (img < 200).mean() > 0.02 and img.std() > 20  # drawn plots and text, not a blank page
