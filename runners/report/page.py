"""``search report RUN``: one self-contained HTML page (plotly.js inline, nothing fetched when it is viewed) and
PNG copies of the main plots (matplotlib), written into the run directory.

It reads only the run directory, which every engine writes alike (``run.json``, ``trials/<n>/arch.yaml`` and
``metrics.json``), through :class:`search_space.rundir.RunDir`: a run directory is untrusted input (shared on a
cluster's disk, sent as a tarball), so no link out of it is followed, every file is read with a size limit and
checked for its types, no storage or file that ``run.json`` merely names is opened, every string from it is
escaped for the HTML (and for plotly, which renders a subset of HTML in labels), and the page and PNGs are written
by renaming a temporary file, never through a link. Optuna's plots and importances use a study rebuilt in
memory from the metrics files. The design-space view (error EDFs split by each choice, raw and at matched
complexity) follows the RegNet paper; its maths is in :mod:`runners.report.edf`.
"""

from __future__ import annotations

import dataclasses
import html
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from search_space.schema import SpecError

from runners.report import edf as E

BLOCK_TYPE = "block type (any stage)"
MATCH_BY = ("params", "macs")


# ----------------------------------------------------------------------------------------------------------------
# Reading a run
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    state: str
    metrics: dict
    arch: Optional[object] = None      # the ModelSpec of trials/<n>/arch.yaml (None if missing or unreadable)
    arch_text: str = ""
    features: dict = field(default_factory=dict)  # choice label -> set of values this trial has

    @property
    def accuracy(self) -> Optional[float]:
        v = self.metrics.get("val_accuracy")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    @property
    def error(self) -> Optional[float]:
        return None if self.accuracy is None else 1.0 - self.accuracy

    def get(self, key: str):
        if key == "latency":
            return self.metrics.get("latency_ms", (self.metrics.get("values") or {}).get("latency"))
        return self.metrics.get(key)


def read_trials(run_dir: Path) -> list[Trial]:
    from search_space.rundir import RunDir
    from search_space.spec import load_spec

    from runners.search.results import records_from_files

    run = RunDir(run_dir)
    trials = []
    for rec in records_from_files(run_dir):
        t = Trial(rec.number, rec.state, rec.attrs)
        rel = f"trials/{rec.number}/arch.yaml"
        if run.exists(rel):
            t.arch_text = run.read_text(rel)
            try:  # parsed as text (a newline keeps load_spec from taking a one-line file for a path)
                t.arch = load_spec(t.arch_text if "\n" in t.arch_text else t.arch_text + "\n").model
            except SpecError:
                t.arch = None
        if t.arch is not None:
            t.features = features_of(t.arch)
        trials.append(t)
    return trials


def features_of(arch) -> dict:
    """The design choices a trial made, as sets (a stage or network holds several blocks, so a trial counts for
    every block type, radix, ... it contains)."""
    from search_space.blocks import relevant_fields
    from search_space.cost import stage_blocks
    from search_space.spec import BlockSpec

    out: dict[str, set] = {BLOCK_TYPE: set()}
    per_stage = {}
    for i, stage in enumerate(arch.stages):
        blocks = stage_blocks(stage)
        per_stage[f"stage {i} block type"] = {b.type for b in blocks}
        out[BLOCK_TYPE] |= {b.type for b in blocks}
        for b in blocks:
            for f in dataclasses.fields(BlockSpec):
                if f.name != "type" and f.name in relevant_fields(b):
                    out.setdefault(f.name, set()).add(getattr(b, f.name))
    out.update(per_stage)
    for i, stage in enumerate(arch.stages):
        out[f"stage {i} depth"] = {len(stage_blocks(stage))}
        if arch.widths.schedule == "stage":
            out[f"stage {i} width"] = {stage.width}
    out["stem"] = {arch.stem.type}
    out["stem width"] = {arch.stem.width}
    out["downsample"] = {arch.downsample}
    return out


def informative(trials: list[Trial], min_trials: int = 2) -> dict:
    """choice label -> {value: indices into ``trials``}, for choices with at least two values that each have
    ``min_trials`` trials (a choice the run never varied says nothing)."""
    out = {}
    labels = []
    for t in trials:
        labels += [k for k in t.features if k not in labels]
    for label in labels:
        groups: dict = {}
        for i, t in enumerate(trials):
            for v in t.features.get(label, ()):
                groups.setdefault(v, []).append(i)
        groups = {v: idx for v, idx in sorted(groups.items(), key=lambda kv: str(kv[0])) if len(idx) >= min_trials}
        if len(groups) >= 2:
            out[label] = groups
    return out


# ----------------------------------------------------------------------------------------------------------------
# The Optuna study (for Optuna's plots and importances)
# ----------------------------------------------------------------------------------------------------------------


def _infer_distributions(trials: list[Trial]) -> dict:
    """Distributions of a run's parameters from the values seen, for runs whose metrics lack ``distributions``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    seen: dict = {}
    for t in trials:
        for k, v in (t.metrics.get("optuna_params") or {}).items():
            seen.setdefault(k, []).append(v)
    out = {}
    for k, vs in seen.items():
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vs):
            out[k] = IntDistribution(min(vs), max(vs))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs):
            lo, hi = float(min(vs)), float(max(vs))
            out[k] = FloatDistribution(lo, hi if hi > lo else lo + 1e-12, log=lo > 0 and hi / lo > 10)
        else:
            out[k] = CategoricalDistribution(sorted(set(vs), key=str))
    return out


def rebuilt_study(trials: list[Trial], objectives: list[str]):
    """An in-memory study holding the finished trials of the metrics files. A trial whose parameters do not fit
    their recorded distributions (a damaged or edited file) enters with the inferred distributions, or, failing
    that, without parameters: it still counts in the history."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState, create_trial

    from runners.search.trial import direction

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    inferred = _infer_distributions(trials)
    study = optuna.create_study(directions=[direction(o) for o in objectives])
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state not in states:
            continue
        params = t.metrics.get("optuna_params") or {}
        given = t.metrics.get("distributions") or {}
        values = t.metrics.get("values") or {}
        complete = t.state == "complete" and all(isinstance(values.get(o), (int, float)) for o in objectives)
        history = [h.get("val_accuracy") for h in t.metrics.get("history") or []]
        common = dict(state=states[t.state] if t.state != "complete" or complete else TrialState.FAIL,
                      values=[values[o] for o in objectives] if complete else None,
                      intermediate_values={i + 1: v for i, v in enumerate(history)
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
                      if len(objectives) == 1 else None)
        for attempt in ("given", "inferred", "none"):
            try:
                if attempt == "given":
                    dists = {k: json_to_distribution(given[k]) if k in given else inferred[k] for k in params}
                elif attempt == "inferred":
                    dists = {k: inferred[k] for k in params}
                else:
                    params, dists = {}, {}
                study.add_trial(create_trial(params=params, distributions=dists, **common))
                break
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
    return study


def importances(study, objectives: list[str], min_trials: int = 5):
    """(importances dict or None, note). Parameters present in every complete trial (Optuna's default)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < min_trials:
        return None, f"skipped: {len(done)} complete trial(s), importances need at least {min_trials}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, target=lambda t: t.values[0], normalize=True)
    except (RuntimeError, ValueError) as e:
        return None, f"skipped: Optuna could not compute importances ({e})"
    if not imp:
        return None, "skipped: no parameter is present in every complete trial"
    return imp, (f"Optuna's fANOVA importances of {objectives[0]} over {len(done)} complete trials; parameters "
                 f"asked only in some trials (a block's radix, say) are better read in the design-space view below")


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def pareto_mask(x, y) -> np.ndarray:
    """Points no other point beats: lower x (cost) and higher y (accuracy)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((-y, x))
    keep = np.zeros(len(x), bool)
    best = -np.inf
    for i in order:
        if y[i] > best:
            keep[i], best = True, y[i]
    return keep


def fmt_count(n) -> str:
    if n is None:
        return ""
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:80]


def esc(value, limit: int = 200) -> str:  # noqa: D401
    """A string from the run directory, cut and escaped for HTML. Plotly labels get it escaped too: plotly.js
    renders a subset of HTML in names and hover text, and shows the escaped form as the plain text it was."""
    text = str(value)
    return html.escape(text if len(text) <= limit else text[:limit - 3] + "...")


def mpl(value, limit: int = 60) -> str:
    """A string from the run directory for a matplotlib label: cut, and ``$`` escaped (mathtext would parse it)."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return "".join(c if c.isprintable() else "?" for c in text).replace("$", r"\$")


def save_png(fig, run, name: str) -> Path:
    """Write a matplotlib figure into the run directory by renaming (never through a link); close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return run.write_bytes(name, buf.getvalue())


def objective_name(objective: str) -> str:
    """What an objective is called on an axis: "validation accuracy", "parameters", ... or its own name."""
    return {"val_accuracy": "validation accuracy", "params": "parameters", "macs": "MACs",
            "latency": "latency (ms / image)"}.get(objective, objective)


def integer_ticks(n: int) -> dict:
    """Plotly axis settings that put ticks on whole trial numbers only (about ten of them)."""
    return {"tickmode": "linear", "tick0": 0, "dtick": max(1, math.ceil(n / 10)), "tickformat": "d"}


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


@dataclass
class ChoiceView:
    """The EDFs and effects of one choice: raw and matched by each complexity measure."""

    label: str
    groups: dict                       # value -> trial indices (complete trials)
    grid: np.ndarray
    curves: dict                       # (panel, value) -> (edf, low, high)
    effects: dict                      # panel -> list[Effect]
    panels: list


def choice_view(label: str, groups: dict, errors: np.ndarray, cost: dict, n_boot: int) -> ChoiceView:
    lo, hi = float(errors.min()), float(errors.max())
    pad = max(1e-3, 0.02 * (hi - lo))
    grid = np.linspace(lo - pad, hi + pad, 200)
    n_buckets = max(2, min(5, len(errors) // 8))
    panels = ["all trials"] + [f"matched {m}" for m in MATCH_BY if cost.get(m) is not None]
    curves, effects = {}, {}
    for panel in panels:
        weights = None
        if panel != "all trials":
            measure = panel.split()[-1]
            weights = E.matched_weights(groups, E.buckets(cost[measure], n_buckets))
        effects[panel] = E.effects(errors, groups, weights)
        for value, idx in groups.items():
            w = None if weights is None else weights[value]
            if w is not None and w.sum() == 0:
                continue
            e = errors[idx]
            band = E.bootstrap_band(e, grid, w, n_boot=n_boot)
            curves[(panel, value)] = (E.edf(e, grid, w), band[0], band[1])
    return ChoiceView(label, groups, grid, curves, effects, panels)


def plotly_edf(view: ChoiceView):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(view.panels), shared_yaxes=True,
                        subplot_titles=[p if p == "all trials" else f"{p} buckets" for p in view.panels])
    for col, panel in enumerate(view.panels, start=1):
        for k, value in enumerate(view.groups):
            if (panel, value) not in view.curves:
                continue
            color = PALETTE[k % len(PALETTE)]
            f, low, high = view.curves[(panel, value)]
            n = next((e.trials for e in view.effects[panel] if e.value == value), len(view.groups[value]))
            name = f"{esc(value, 60)} ({n})"
            fig.add_trace(go.Scatter(x=np.r_[view.grid, view.grid[::-1]], y=np.r_[high, low[::-1]], fill="toself",
                                     fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=esc(value, 60)), row=1, col=col)
            fig.add_trace(go.Scatter(x=view.grid, y=f, mode="lines", line={"color": color, "width": 2.5,
                                                                             "shape": "hv"},
                                     name=name, legendgroup=esc(value, 60), showlegend=col == 1,
                                     hovertemplate=f"{esc(value, 60)}: %{{y:.2f}} below error %{{x:.3f}}"
                                                   "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="validation error", row=1, col=col)
    fig.update_yaxes(title_text="fraction of trials with lower error", range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=340, margin={"l": 60, "r": 20, "t": 40, "b": 45},
                      legend={"title": {"text": esc(view.label, 60)}}, template="plotly_white")
    return fig


def png_edf(view: ChoiceView, run, name: str) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(view.panels), figsize=(4.2 * len(view.panels), 3.4), sharey=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], view.panels):
        for k, value in enumerate(view.groups):
            if (panel, value) not in view.curves:
                continue
            color = PALETTE[k % len(PALETTE)]
            f, low, high = view.curves[(panel, value)]
            ax.fill_between(view.grid, low, high, color=color, alpha=0.15, step="post", linewidth=0)
            ax.step(view.grid, f, where="post", color=color, lw=2, label=mpl(value))
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("validation error")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of trials with lower error")
    axes[0][0].legend(title=mpl(view.label), fontsize=8, title_fontsize=8, loc="lower right")
    fig.suptitle(f"error EDF by {mpl(view.label)} (90% bootstrap bands)", fontsize=11)
    fig.tight_layout()
    return save_png(fig, run, name)


def pareto_figures(done: list[Trial], run):
    """(plotly figure, png path) of accuracy against params, MACs and latency (where measured)."""
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    axes = [("params", "parameters"), ("macs", "MACs")]
    if any(t.get("latency") is not None for t in done):
        axes.append(("latency", "latency (ms / image)"))
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=[a[1] for a in axes])
    mfig, maxes = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.4), sharey=True, squeeze=False)
    for col, (key, title) in enumerate(axes, start=1):
        pts = [t for t in done if isinstance(t.get(key), (int, float)) and t.accuracy is not None]
        if not pts:
            continue
        x = np.array([t.get(key) for t in pts], float)
        y = np.array([t.accuracy for t in pts])
        front = pareto_mask(x, y)
        text = [f"trial {t.number}: {esc(t.metrics.get('blocks') or '', 120)}" for t in pts]
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", marker={"color": "#9aa5b1", "size": 8}, text=text,
                                 name="trials", showlegend=col == 1,
                                 hovertemplate="%{text}<br>%{x:.3s}, accuracy %{y:.3f}<extra></extra>"),
                      row=1, col=col)
        order = np.argsort(x[front])
        fig.add_trace(go.Scatter(x=x[front][order], y=y[front][order], mode="lines+markers",
                                 line={"color": "#d62728", "shape": "hv"}, marker={"size": 10},
                                 text=[text[i] for i in np.flatnonzero(front)[order]], name="Pareto front",
                                 showlegend=col == 1,
                                 hovertemplate="%{text}<br>%{x:.3s}, accuracy %{y:.3f}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text=title, type="log", row=1, col=col)
        ax = maxes[0][col - 1]
        ax.scatter(x, y, color="#9aa5b1", s=18, label="trials")
        ax.step(x[front][order], y[front][order], where="post", color="#d62728", marker="o", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_layout(height=360, margin={"l": 60, "r": 20, "t": 40, "b": 45}, template="plotly_white")
    maxes[0][0].set_ylabel("validation accuracy")
    maxes[0][0].legend(fontsize=8)
    mfig.tight_layout()
    return fig, save_png(mfig, run, "pareto.png")


def history_figures(study, objectives: list[str], run):
    """Optuna's optimization history (objective and best so far), as plotly and as a matplotlib PNG, with the
    objective's own name on the value axis and whole trial numbers on the other."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl
    from matplotlib.ticker import MaxNLocator

    name = objective_name(objectives[0])
    kw = {"target_name": name}
    if len(objectives) > 1:
        kw["target"] = lambda t: t.values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
        fig = vis.plot_optimization_history(study, **kw)
        ax = vis_mpl.plot_optimization_history(study, **kw)
    for trace in fig.data:  # Optuna's hover text holds the parameters as given: names and values from the run
        if isinstance(trace.text, (list, tuple)):
            trace.text = [esc(t, 2000) for t in trace.text]
        elif isinstance(trace.text, str):
            trace.text = esc(trace.text, 2000)
        if trace.name:
            trace.name = esc(trace.name, 60)
    n = len(study.get_trials(deepcopy=False))
    fig.update_layout(height=360, template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 45},
                      title=None)
    fig.update_xaxes(title_text="trial", **integer_ticks(n))
    fig.update_yaxes(title_text=esc(name, 60))
    ax.set_title("")
    ax.set_xlabel("trial")
    ax.set_ylabel(mpl(name))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.figure.set_size_inches(7, 3.6)
    ax.figure.tight_layout()
    return fig, save_png(ax.figure, run, "history.png")


def importance_figures(imp: dict, objective: str, run):
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    shown = [(k, v) for k, v in imp.items() if v >= 0.005][:15]  # the rest would be a wall of zero bars
    names, values = [esc(k, 60) for k, _ in shown][::-1], [v for _, v in shown][::-1]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker={"color": "#1f77b4"},
                           hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(height=max(220, 28 * len(names) + 80), template="plotly_white",
                      xaxis_title=f"importance for {esc(objective_name(objective), 60)}",
                      margin={"l": 160, "r": 20, "t": 20, "b": 45})
    mfig, ax = plt.subplots(figsize=(6, max(2.0, 0.35 * len(names) + 1)))
    ax.barh(range(len(names)), values, color="#1f77b4")
    ax.set_yticks(range(len(names)), [mpl(k) for k, _ in shown][::-1])
    ax.set_xlabel(f"importance for {mpl(objective_name(objective))} (fANOVA)")
    mfig.tight_layout()
    return fig, save_png(mfig, run, "importances.png")


# ----------------------------------------------------------------------------------------------------------------
# Text parts
# ----------------------------------------------------------------------------------------------------------------


def block_diagram(arch, in_channels: Optional[int] = None) -> str:
    """A trial's network as text: stem, every block with its settings and output shape, head."""
    from search_space.cost import architecture_cost, model_widths, stage_blocks
    from search_space.spec import block_to_yaml

    cost = architecture_cost(arch, in_channels=in_channels)
    stem_w, widths, head_w = model_widths(arch)
    ci, h, _ = cost.input_shape
    lines = [f"input      {h}x{h}" + (f", {ci} channels" if arch.in_channels else ""),
             f"stem       {arch.stem.type}, {stem_w} channels"]
    for i, (stage, row) in enumerate(zip(arch.stages, cost.rows[1:] if len(cost.rows) > len(arch.stages)
                                         else cost.rows)):
        lines.append(f"stage {i}    stride {stage.stride}, {fmt_count(row.params)} params, out "
                     f"{'x'.join(map(str, row.out_shape))}")
        for j, block in enumerate(stage_blocks(stage)):
            keys = {k: v for k, v in block_to_yaml(block).items() if k != "type"}
            detail = " ".join(f"{k}={v}" for k, v in keys.items())
            lines.append(f"  {i}.{j}      {block.type:<16} -> {widths[i][j]:<5} {detail}".rstrip())
    head = f"{arch.head.pool} pool"
    if head_w:
        head = f"1x1 conv {head_w}, " + head
    lines.append(f"head       {head}, dropout {arch.head.dropout}, linear")
    return "\n".join(lines)


def effects_table(view: ChoiceView) -> str:
    """Per value: trials, median error, share below the population's median error [90% CI], verdict; raw and
    at matched complexity."""
    head = "".join(f"<th colspan=3>{esc(p)}</th>" for p in view.panels)
    sub = "<th>trials</th><th>below median [90% CI]</th><th>verdict</th>" * len(view.panels)
    rows = []
    for value in view.groups:
        cells = [f"<td><b>{esc(str(value))}</b></td>"]
        for panel in view.panels:
            eff = next((e for e in view.effects[panel] if e.value == value), None)
            if eff is None:
                cells.append("<td colspan=3 class=muted>no shared bucket</td>")
                continue
            cells.append(f"<td>{eff.trials}</td><td>{eff.share_below_median:.2f} [{eff.low:.2f}, {eff.high:.2f}]"
                         f"</td><td class='{slug(eff.verdict)}'>{eff.verdict}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class=effects><tr><th rowspan=2>{esc(view.label)}</th>{head}</tr><tr>{sub}</tr>"
            + "".join(rows) + "</table>")


def summary_rows(views: list[ChoiceView]) -> str:
    """Every value of every choice, raw and at matched complexity, most reliable first (see
    :func:`runners.report.edf.reliability`: clear verdicts by how far their interval stays from 0.5, then the
    rest by trials), not by the raw size of an effect, which is largest where trials are fewest."""
    rows = []
    for view in views:
        for value in view.groups:
            verdicts = {}
            for panel in view.panels:
                eff = next((e for e in view.effects[panel] if e.value == value), None)
                verdicts[panel] = eff
            raw = verdicts["all trials"]
            cells = "".join(
                f"<td class='{slug(e.verdict)}'>{e.verdict} ({e.share_below_median:.2f} "
                f"[{e.low:.2f}, {e.high:.2f}], n={e.trials})</td>"
                if e is not None else "<td class=muted>-</td>" for e in verdicts.values())
            key = E.reliability(raw) if raw else (3, 0, 0)
            rows.append((key, f"<tr><td>{esc(view.label)}</td><td><b>{esc(value)}</b></td>{cells}</tr>"))
    rows.sort(key=lambda r: r[0])
    head = "".join(f"<th>{esc(p)}</th>" for p in views[0].panels) if views else ""
    return (f"<table class=effects><tr><th>choice</th><th>value</th>{head}</tr>"
            + "".join(r for _, r in rows) + "</table>")


def headline(views: list[ChoiceView], n_done: int) -> str:
    """The findings in words: block types ranked, then every value with a clear effect."""
    parts = []
    by_label = {v.label: v for v in views}
    if BLOCK_TYPE in by_label:
        view = by_label[BLOCK_TYPE]
        ranked = sorted(view.effects["all trials"], key=lambda e: -e.share_below_median)
        matched = {e.value: e for e in view.effects[view.panels[-1]]} if len(view.panels) > 1 else {}
        items = ", ".join(
            f"<b>{esc(str(e.value))}</b> {e.share_below_median:.2f} (n={e.trials}"
            + (f"; {view.panels[-1]}: {matched[e.value].share_below_median:.2f}" if e.value in matched else "")
            + ")" for e in ranked)
        parts.append(f"<li>Block types, by the share of the trials containing them that beat the median error "
                     f"(0.5 = no effect): {items}.</li>")
    for verdict in ("helps", "hurts"):
        found = []
        for view in views:
            for e in view.effects["all trials"]:
                if e.verdict == verdict:
                    also = [p for p in view.panels[1:] if any(m.value == e.value and m.verdict == verdict
                                                              for m in view.effects[p])]
                    where = "; also at " + ", ".join(also) if also else "; not at matched complexity"
                    found.append(f"{esc(view.label)} = <b>{esc(str(e.value))}</b> "
                                 f"({e.trials} trials{where})")
        if found:
            parts.append(f"<li><span class='{verdict}'>{verdict.capitalize()}</span>: {'; '.join(found)}.</li>")
    if not any(e.verdict in ("helps", "hurts") for v in views for e in v.effects["all trials"]):
        parts.append(f"<li>No value has a clear effect with {n_done} complete trials; intervals shrink with more "
                     f"trials.</li>")
    return "<ul class=headline>" + "".join(parts) + "</ul>"


def searched_params(trials: list[Trial]) -> list[str]:
    """Every parameter the search asked for (Optuna's names: ``stages.0.depth``, ``train.lr``), in the order
    they first appear."""
    names: dict[str, None] = {}
    for t in sorted(trials, key=lambda t: t.number):
        names.update(dict.fromkeys(t.metrics.get("optuna_params") or {}))
    return list(names)


def fmt_param(v) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return f"{v:.4g}"
    return str(v)


def trial_table(trials: list[Trial], objectives: list[str], params: list[str] = ()) -> str:
    """Every trial, best first, with its results and then every value it was given for each searched parameter
    (continuous ones such as the learning rate included); blank where a trial was not asked (a conditional
    parameter)."""
    cols = [("trial", lambda t: t.number, str), ("state", lambda t: t.state, str),
            ("val acc", lambda t: t.accuracy, lambda v: f"{v:.4f}"),
            ("params", lambda t: t.get("params"), fmt_count), ("MACs", lambda t: t.get("macs"), fmt_count),
            ("latency ms", lambda t: t.get("latency"), lambda v: f"{v:.3f}"),
            ("seconds", lambda t: t.get("seconds"), lambda v: f"{v:.1f}"),
            ("epochs", lambda t: t.get("epochs"), str), ("blocks (per stage)", lambda t: t.get("blocks"), str),
            ("reason", lambda t: t.get("reason"), str)]
    cols += [(name, lambda t, n=name: (t.metrics.get("optuna_params") or {}).get(n), fmt_param) for name in params]
    head = "".join(f"<th onclick='sortTable(this)'{' class=param' if i >= 10 else ''}>{esc(c, 80)}</th>"
                   for i, (c, _, _) in enumerate(cols))
    rows = []
    for t in sorted(trials, key=lambda t: -(t.accuracy or -1)):
        cells = []
        for _, get, fmt in cols:
            v = get(t)
            shown = "" if v is None or v == "" else esc(fmt(v), 300)
            key = v if isinstance(v, (int, float)) and not isinstance(v, bool) else shown
            cells.append(f"<td data-key='{esc(key, 300)}'>{shown}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<div class=scroll><table id=trials class=sortable><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table></div>")


def _slice_axis(dist) -> dict:
    """The x axis of a slice: categories for a choice, whole-number ticks for an integer, log for a log range
    (``None`` resets a setting the previous parameter made)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return {"type": "category", "dtick": None, "tickformat": None}
    if isinstance(dist, IntDistribution):
        return {"type": "linear", "dtick": max(1, math.ceil((dist.high - dist.low) / 10)), "tickformat": "d"}
    return {"type": "log" if dist.log else "linear", "dtick": None, "tickformat": None}


def slice_figures(trials: list[Trial], objectives: list[str], params: list[str], run):
    """(plotly figure, png path or None): the first objective of every complete trial against the value it was
    given, one parameter at a time (Optuna dashboard's slice plot): a menu picks the parameter, log axes for
    log-scaled ranges, categories for choices. The PNG holds the continuous parameters (floats), where a table
    of values reads worst."""
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    objective = objectives[0]
    done = [t for t in trials if t.state == "complete"
            and isinstance((t.metrics.get("values") or {}).get(objective), (int, float))]
    dists = _infer_distributions(done)
    shown = [p for p in params if p in dists]
    if not done or not shown:
        return None, None
    name = objective_name(objective)
    fig = go.Figure()
    buttons = []
    for i, p in enumerate(shown):
        pts = [t for t in done if p in (t.metrics.get("optuna_params") or {})]
        dist = dists[p]
        categorical = isinstance(dist, CategoricalDistribution)
        x = [esc(fmt_param(t.metrics["optuna_params"][p]), 60) if categorical else t.metrics["optuna_params"][p]
             for t in pts]
        fig.add_trace(go.Scatter(
            x=x, y=[t.metrics["values"][objective] for t in pts], mode="markers", visible=i == 0,
            marker={"size": 9, "color": [t.number for t in pts], "colorscale": "Blues", "showscale": i == 0,
                    "colorbar": {"title": {"text": "trial"}, "tickformat": "d"}, "line": {"width": 1,
                                                                                         "color": "#333"}},
            text=[f"trial {t.number}" for t in pts], name=esc(p, 60),
            hovertemplate="%{text}: %{x}, " + esc(name, 40) + " %{y:.4g}<extra></extra>"))
        axis = _slice_axis(dist)
        buttons.append({"label": esc(p, 60), "method": "update",
                        "args": [{"visible": [j == i for j in range(len(shown))]},
                                 {"xaxis.title.text": esc(p, 60), **{f"xaxis.{k}": v for k, v in axis.items()}}]})
    fig.update_layout(height=380, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 45},
                      updatemenus=[{"buttons": buttons, "direction": "down", "x": 0, "y": 1.18,
                                    "xanchor": "left", "showactive": True}] if len(shown) > 1 else [],
                      xaxis={"title": {"text": esc(shown[0], 60)}, **_slice_axis(dists[shown[0]])},
                      yaxis={"title": {"text": esc(name, 60)}})
    floats = [p for p in shown if isinstance(dists[p], FloatDistribution)][:6]
    png = None
    if floats:
        mfig, axes = plt.subplots(1, len(floats), figsize=(4.2 * len(floats), 3.4), sharey=True, squeeze=False)
        for ax, p in zip(axes[0], floats):
            pts = [t for t in done if p in (t.metrics.get("optuna_params") or {})]
            ax.scatter([t.metrics["optuna_params"][p] for t in pts], [t.metrics["values"][objective] for t in pts],
                       c=[t.number for t in pts], cmap="Blues", edgecolors="#333", s=30)
            if dists[p].log:
                ax.set_xscale("log")
            ax.set_xlabel(mpl(p))
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(mpl(name))
        mfig.suptitle(f"{mpl(name)} by searched value (darker: later trial)", fontsize=11)
        mfig.tight_layout()
        png = save_png(mfig, run, "slice.png")
    return fig, png


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1400px;color:#1b1f24;
 padding:0 18px} h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.note{color:#555;font-size:14px;max-width:1000px} .muted{color:#999}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #e1e4e8;padding:3px 8px;
 text-align:left} th{background:#f6f8fa} table.sortable th{cursor:pointer}
td.helps{background:#d9f2dd;font-weight:600} td.hurts{background:#f9dcdc} td.no_clear_effect{color:#666}
td.too_few_trials{color:#999} pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
details{margin:2px 0} span.helps{background:#d9f2dd;font-weight:600;padding:0 4px}
span.hurts{background:#f9dcdc;font-weight:600;padding:0 4px} ul.headline li{margin:4px 0}
.plot{margin:6px 0 18px 0} .choice{margin-top:22px} div.scroll{overflow-x:auto;max-width:100%}
th.param{background:#eef3fb} summary{cursor:pointer}
"""

SORT_JS = """
function sortTable(th){const table=th.closest('table'),body=table.tBodies[0],i=[...th.parentNode.children]
.indexOf(th),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const rows=[...body.rows];rows.sort((a,b)=>{
const x=a.cells[i].dataset.key,y=b.cells[i].dataset.key,nx=parseFloat(x),ny=parseFloat(y);
const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c});rows.forEach(r=>body.appendChild(r))}
"""


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


SPEC_COPY = "spec.yaml"  # the copy of its spec that `search run` keeps in the run directory


def _spec_text(run, info: dict) -> tuple[str, str]:
    """(where it came from, text) of the run's spec: the copy inside the run directory, or a mapping in run.json.
    A path that run.json merely names is never opened: it may point anywhere (``/etc/passwd``)."""
    if run.exists(SPEC_COPY):
        return SPEC_COPY, run.read_text(SPEC_COPY)
    spec = info.get("spec")
    if isinstance(spec, dict):
        import yaml

        return "run.json", yaml.safe_dump(spec, sort_keys=False)
    if isinstance(spec, str):
        return spec, (f"(not shown: the run directory holds no {SPEC_COPY}, and a report embeds only files of its "
                      f"run directory, never a path that run.json names)")
    return "", "(run.json names no spec)"


def design_section(views: list, n_done: int) -> str:
    """The design-space view: a note and the rule when there are too few trials to read it (its panels folded
    away), then the table of every value, most reliable first, and one folded panel per choice."""
    need = E.min_design_trials()
    rule = (f"<p class=note><b>Rule:</b> read this section from {need} complete trials on. A choice of "
            f"{E.DESIGN_VALUES} values then gives each about {E.trials_to_tell()}, the fewest at which a value "
            f"whose trials beat the median error {E.STRONG_SHARE:.0%} of the time is told from no effect (its 90% "
            f"interval clears 0.5); a value gets a verdict only from {E.MIN_TRIALS} trials.</p>")
    if not views:
        return (f"<p class=note>Too few trials to read: {n_done} complete; the view needs at least 4 and a choice "
                f"with two values that each have 2 trials.</p>" + rule)
    enough = n_done >= need
    out = [] if enough else [f"<p class=note><b>Too few trials to read:</b> {n_done} complete, fewer than {need}. "
                             f"What follows is folded away: at this size its verdicts are mostly \"too few "
                             f"trials\" or \"no clear effect\", and differences between curves are noise.</p>"]
    out.append(rule)
    table = ("<p class=note>For every value of every choice: the share of its trials whose error is below the "
             "median error of all complete trials, with a 90% interval (Jeffreys, on the effective number of "
             "trials). <b>helps</b>: the whole interval is above 0.5; <b>hurts</b>: below. <i>matched "
             "params/macs</i> reweights trials so that each complexity bucket counts equally for every value "
             "(RegNet's normalized EDF), so a value is not credited for merely making bigger networks. A trial "
             "counts for every value it contains. Most reliable first: clear verdicts by how far their interval "
             "stays from 0.5, then the rest by trials.</p>" + summary_rows(views))
    panels = "".join(
        f"<details class=choice><summary>{esc(view.label)}: EDFs and effects</summary>" + effects_table(view)
        + f"<div class=plot>{plotly_edf(view).to_html(full_html=False, include_plotlyjs=False)}</div></details>"
        for view in views)
    body = ("<p class=note>Each curve is the fraction of a value's trials with error below x (Radosavovic et al. "
            "2020, <i>Designing Network Design Spaces</i>); a curve further up and left is better. Shaded: 90% "
            "bootstrap band. Legend: value (trials). Click a choice to open its panel.</p>" + table + panels)
    if enough:
        return "".join(out) + body
    return "".join(out) + f"<details><summary>show the design-space view anyway</summary>{body}</details>"


def write_report(run_dir: Path, n_boot: int = 400) -> dict:
    """Write ``report.html`` and the PNGs into ``run_dir``; returns {"html": path, "png": [paths], ...}."""
    import plotly.offline

    import matplotlib

    matplotlib.use("Agg")
    from search_space.rundir import RunDir

    run = RunDir(run_dir)
    info = run.info()
    objectives = list(info.get("objectives") or ["val_accuracy"])
    trials = read_trials(run_dir)
    if not trials:
        raise SpecError("", f"{run_dir}: no finished trials yet (trials/*/metrics.json); nothing to report")
    done = [t for t in trials if t.state == "complete" and t.accuracy is not None and t.arch is not None]
    study = rebuilt_study(trials, objectives)
    params = searched_params(trials)
    pngs, sections, notes = [], [], []

    figs = []  # (title, explanation, plotly figure)
    if study.get_trials(deepcopy=False, states=None):
        try:
            fig, png = history_figures(study, objectives, run)
            figs.append(("Optimization history", f"{objective_name(objectives[0])} of every trial in order, and the "
                         f"best so far (from an in-memory study rebuilt from trials/*/metrics.json: the report "
                         f"reads only its run directory and opens no storage).", fig))
            pngs.append(png)
        except (ValueError, RuntimeError) as e:
            notes.append(f"history skipped: {e}")
    fig, png = slice_figures(trials, objectives, params, run)
    if fig is not None:
        figs.append(("Searched values", f"{objective_name(objectives[0])} of every complete trial against the value "
                     f"it was given, one parameter at a time (the menu picks it; darker: later trial). Continuous "
                     f"values such as the learning rate read here best.", fig))
        if png is not None:
            pngs.append(png)
    if done:
        fig, png = pareto_figures(done, run)
        figs.append(("Pareto front", "Validation accuracy against cost; red: trials no other trial beats on both "
                     "(higher accuracy at lower cost). Hover a point for its blocks.", fig))
        pngs.append(png)
    imp, imp_note = importances(study, objectives)
    if imp:
        fig, png = importance_figures(imp, objectives[0], run)
        figs.append(("Parameter importances", imp_note + ".", fig))
        pngs.append(png)

    # design space
    views = []
    if len(done) >= 4:
        errors = np.array([t.error for t in done])
        cost = {m: np.array([float(t.get(m)) for t in done]) if all(isinstance(t.get(m), (int, float)) and
                                                                   t.get(m) > 0 for t in done) else None
                for m in MATCH_BY}
        for label, groups in informative(done).items():
            view = choice_view(label, {v: np.array(i) for v, i in groups.items()}, errors, cost, n_boot)
            views.append(view)
            pngs.append(png_edf(view, run, f"edf_{slug(label)}.png"))

    blocks = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.arch is None:
            continue
        try:
            text = block_diagram(t.arch)
        except SpecError as e:
            text = f"(cannot draw: {e})"
        acc = f"val {t.accuracy:.4f}" if t.accuracy is not None else esc(t.state)
        blocks.append(f"<details><summary>trial {t.number}: {acc}, {esc(t.get('blocks') or '')}"
                      f"</summary><pre>{html.escape(text)}</pre></details>")
    spec_name, spec_text = _spec_text(run, info)

    c = {s: sum(t.state == s for t in trials) for s in ("complete", "pruned", "failed")}
    best = max(done, key=lambda t: t.accuracy) if done else None
    head = (f"<h1>{esc(info.get('name'))}: search report</h1><p class=note>{len(trials)} trials "
            f"({c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed); objectives "
            f"{esc(', '.join(objectives))}; engine {esc(info.get('backend', 'optuna'))}"
            + (f"; best: trial {best.number}, validation accuracy {best.accuracy:.4f}, "
               f"{fmt_count(best.get('params'))} params, blocks {esc(best.get('blocks'))}" if best else "")
            + ". Errors below are 1 - validation accuracy of complete trials; pruned and failed trials are left "
              "out of the EDFs.</p>")
    if views and len(done) >= E.min_design_trials():
        sections.append("<h2>Findings</h2>" + headline(views, len(done)))
    for title, note, fig in figs:
        sections.append(f"<h2>{title}</h2><p class=note>{esc(note, 2000)}</p><div class=plot>"
                        f"{fig.to_html(full_html=False, include_plotlyjs=False)}</div>")
    if not imp:
        sections.append(f"<h2>Parameter importances</h2><p class=note>{esc(imp_note, 2000)}</p>")
    sections.append("<h2>Design space: error EDFs by choice</h2>" + design_section(views, len(done)))
    sections.append("<h2>Trials</h2><p class=note>Click a column to sort; the shaded columns are the values the "
                    "search gave each trial (blank: not asked).</p>" + trial_table(trials, objectives, params))
    sections.append(f"<h2>Block diagrams</h2><details><summary>{len(blocks)} trials: stem, every block with its "
                    f"settings and output shape, head</summary>" + "".join(blocks) + "</details>")
    sections.append(f"<h2>Spec</h2><details><summary>{esc(spec_name)}</summary><pre>{html.escape(spec_text)}</pre>"
                    f"</details>")
    if notes:
        sections.append("<p class=note>" + "<br>".join(esc(n, 500) for n in notes) + "</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(info.get('name'))} report"
            f"</title><style>{CSS}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"<script>{SORT_JS}</script></head><body>{head}{''.join(sections)}</body></html>")
    out = run.write_text("report.html", page)
    return {"html": out, "png": pngs, "plots": len(figs) + len(views), "choices": [v.label for v in views]}
