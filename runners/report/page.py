"""``search report RUN``: one self-contained HTML page (plotly.js inline, nothing fetched when it is viewed) and
PNG copies of the main plots (matplotlib), written into the run directory.

It reads the run directory, which every engine writes alike (``run.json``, ``trials/<n>/arch.yaml`` and
``metrics.json``), and uses an Optuna study only for Optuna's plots and parameter importances: the run's own
study when its storage can be opened, else one rebuilt in memory from the metrics files. The design-space view
(error EDFs split by each choice, raw and at matched complexity) follows the RegNet paper; its maths is in
:mod:`runners.report.edf`.
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
    from search_space.spec import load_spec

    from runners.search.results import records_from_files

    trials = []
    for rec in records_from_files(run_dir):
        t = Trial(rec.number, rec.state, rec.attrs)
        path = run_dir / "trials" / str(rec.number) / "arch.yaml"
        if path.exists():
            t.arch_text = path.read_text(encoding="utf-8")
            try:
                t.arch = load_spec(path).model
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
    """An in-memory study holding the finished trials of the metrics files."""
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState, create_trial

    from runners.search.trial import direction

    inferred = _infer_distributions(trials)
    study = optuna.create_study(directions=[direction(o) for o in objectives])
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state not in states:
            continue
        params = t.metrics.get("optuna_params") or {}
        given = t.metrics.get("distributions") or {}
        dists = {k: json_to_distribution(given[k]) if k in given else inferred[k] for k in params}
        values = t.metrics.get("values") or {}
        complete = t.state == "complete" and all(o in values for o in objectives)
        history = [h.get("val_accuracy") for h in t.metrics.get("history") or []]
        study.add_trial(create_trial(
            state=states[t.state] if t.state != "complete" or complete else TrialState.FAIL,
            params=params, distributions=dists, values=[values[o] for o in objectives] if complete else None,
            intermediate_values={i + 1: v for i, v in enumerate(history) if isinstance(v, (int, float))}
            if len(objectives) == 1 else None))
    return study


def open_study(run_dir: Path, info: dict, trials: list[Trial], objectives: list[str]):
    """(study, where it came from): the run's Optuna study, or one rebuilt from the metrics files."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if info.get("backend", "optuna") == "optuna" and info.get("storage") and info.get("study_name"):
        try:
            from runners.search.storage import open_storage

            storage = open_storage(info["storage"], read_only=True)
            return optuna.load_study(study_name=info["study_name"], storage=storage), "the run's Optuna study"
        except Exception:  # noqa: BLE001 - a missing or moved storage: the files still tell the trials
            pass
    return rebuilt_study(trials, objectives), "an in-memory study rebuilt from trials/*/metrics.json"


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
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


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
            name = f"{value} ({n})"
            fig.add_trace(go.Scatter(x=np.r_[view.grid, view.grid[::-1]], y=np.r_[high, low[::-1]], fill="toself",
                                     fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                     showlegend=False, legendgroup=str(value)), row=1, col=col)
            fig.add_trace(go.Scatter(x=view.grid, y=f, mode="lines", line={"color": color, "width": 2.5,
                                                                             "shape": "hv"},
                                     name=name, legendgroup=str(value), showlegend=col == 1,
                                     hovertemplate=f"{html.escape(str(value))}: %{{y:.2f}} below error %{{x:.3f}}"
                                                   "<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text="validation error", row=1, col=col)
    fig.update_yaxes(title_text="fraction of trials with lower error", range=[0, 1.02], row=1, col=1)
    fig.update_layout(height=340, margin={"l": 60, "r": 20, "t": 40, "b": 45},
                      legend={"title": {"text": view.label}}, template="plotly_white")
    return fig


def png_edf(view: ChoiceView, path: Path) -> None:
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
            ax.step(view.grid, f, where="post", color=color, lw=2, label=f"{value}")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("validation error")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of trials with lower error")
    axes[0][0].legend(title=view.label, fontsize=8, title_fontsize=8, loc="lower right")
    fig.suptitle(f"error EDF by {view.label} (90% bootstrap bands)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto_figures(done: list[Trial], out: Path):
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
        text = [f"trial {t.number}: {t.metrics.get('blocks', '')}" for t in pts]
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
    path = out / "pareto.png"
    mfig.savefig(path, dpi=110)
    plt.close(mfig)
    return fig, path


def history_figures(study, objectives: list[str], out: Path):
    """Optuna's optimization history (objective and best so far), as plotly and as a matplotlib PNG."""
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    kw = {} if len(objectives) == 1 else {"target": lambda t: t.values[0], "target_name": objectives[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
        fig = vis.plot_optimization_history(study, **kw)
        ax = vis_mpl.plot_optimization_history(study, **kw)
    fig.update_layout(height=360, template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 45})
    ax.figure.set_size_inches(7, 3.6)
    ax.figure.tight_layout()
    path = out / "history.png"
    ax.figure.savefig(path, dpi=110)
    plt.close(ax.figure)
    return fig, path


def importance_figures(imp: dict, objective: str, out: Path):
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    shown = [(k, v) for k, v in imp.items() if v >= 0.005][:15]  # the rest would be a wall of zero bars
    names, values = [k for k, _ in shown][::-1], [v for _, v in shown][::-1]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker={"color": "#1f77b4"},
                           hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(height=max(220, 28 * len(names) + 80), template="plotly_white",
                      xaxis_title=f"importance for {objective}", margin={"l": 160, "r": 20, "t": 20, "b": 45})
    mfig, ax = plt.subplots(figsize=(6, max(2.0, 0.35 * len(names) + 1)))
    ax.barh(names, values, color="#1f77b4")
    ax.set_xlabel(f"importance for {objective} (fANOVA)")
    mfig.tight_layout()
    path = out / "importances.png"
    mfig.savefig(path, dpi=110)
    plt.close(mfig)
    return fig, path


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
    head = "".join(f"<th colspan=3>{html.escape(p)}</th>" for p in view.panels)
    sub = "<th>trials</th><th>below median [90% CI]</th><th>verdict</th>" * len(view.panels)
    rows = []
    for value in view.groups:
        cells = [f"<td><b>{html.escape(str(value))}</b></td>"]
        for panel in view.panels:
            eff = next((e for e in view.effects[panel] if e.value == value), None)
            if eff is None:
                cells.append("<td colspan=3 class=muted>no shared bucket</td>")
                continue
            cells.append(f"<td>{eff.trials}</td><td>{eff.share_below_median:.2f} [{eff.low:.2f}, {eff.high:.2f}]"
                         f"</td><td class='{slug(eff.verdict)}'>{eff.verdict}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class=effects><tr><th rowspan=2>{html.escape(view.label)}</th>{head}</tr><tr>{sub}</tr>"
            + "".join(rows) + "</table>")


def summary_rows(views: list[ChoiceView]) -> str:
    """The headline: every value whose effect is clear (helps or hurts), raw and at matched params."""
    rows = []
    for view in views:
        for value in view.groups:
            verdicts = {}
            for panel in view.panels:
                eff = next((e for e in view.effects[panel] if e.value == value), None)
                verdicts[panel] = eff
            raw = verdicts["all trials"]
            cells = "".join(
                f"<td class='{slug(e.verdict)}'>{e.verdict} ({e.share_below_median:.2f}, n={e.trials})</td>"
                if e is not None else "<td class=muted>-</td>" for e in verdicts.values())
            strength = abs(raw.share_below_median - 0.5) if raw else 0
            rows.append((strength, f"<tr><td>{html.escape(view.label)}</td><td><b>{html.escape(str(value))}</b>"
                                   f"</td>{cells}</tr>"))
    rows.sort(key=lambda r: -r[0])
    head = "".join(f"<th>{html.escape(p)}</th>" for p in views[0].panels) if views else ""
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
            f"<b>{html.escape(str(e.value))}</b> {e.share_below_median:.2f} (n={e.trials}"
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
                    found.append(f"{html.escape(view.label)} = <b>{html.escape(str(e.value))}</b> "
                                 f"({e.trials} trials{where})")
        if found:
            parts.append(f"<li><span class='{verdict}'>{verdict.capitalize()}</span>: {'; '.join(found)}.</li>")
    if not any(e.verdict in ("helps", "hurts") for v in views for e in v.effects["all trials"]):
        parts.append(f"<li>No value has a clear effect with {n_done} complete trials; intervals shrink with more "
                     f"trials.</li>")
    return "<ul class=headline>" + "".join(parts) + "</ul>"


def trial_table(trials: list[Trial], objectives: list[str]) -> str:
    cols = [("trial", lambda t: t.number, str), ("state", lambda t: t.state, str),
            ("val acc", lambda t: t.accuracy, lambda v: f"{v:.4f}"),
            ("params", lambda t: t.get("params"), fmt_count), ("MACs", lambda t: t.get("macs"), fmt_count),
            ("latency ms", lambda t: t.get("latency"), lambda v: f"{v:.3f}"),
            ("seconds", lambda t: t.get("seconds"), lambda v: f"{v:.1f}"),
            ("epochs", lambda t: t.get("epochs"), str), ("blocks (per stage)", lambda t: t.get("blocks"), str),
            ("reason", lambda t: t.get("reason"), str)]
    head = "".join(f"<th onclick='sortTable(this)'>{c}</th>" for c, _, _ in cols)
    rows = []
    for t in sorted(trials, key=lambda t: -(t.accuracy or -1)):
        cells = []
        for _, get, fmt in cols:
            v = get(t)
            shown = "" if v is None or v == "" else html.escape(fmt(v))
            key = v if isinstance(v, (int, float)) and not isinstance(v, bool) else shown
            cells.append(f"<td data-key='{html.escape(str(key))}'>{shown}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table id=trials class=sortable><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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
.plot{margin:6px 0 18px 0} .choice{margin-top:22px}
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


def _spec_text(run_dir: Path, info: dict) -> tuple[str, str]:
    spec = info.get("spec")
    if isinstance(spec, dict):
        import yaml

        return "run.json", yaml.safe_dump(spec, sort_keys=False)
    if isinstance(spec, str):
        for cand in (Path(spec), run_dir.parent / spec, run_dir / Path(spec).name):
            if cand.is_file():
                return str(spec), cand.read_text(encoding="utf-8")
        return str(spec), f"(the spec file {spec} is not readable from here)"
    return "", "(run.json names no spec)"


def write_report(run_dir: Path, n_boot: int = 400) -> dict:
    """Write ``report.html`` and the PNGs into ``run_dir``; returns {"html": path, "png": [paths], ...}."""
    import plotly.offline

    import matplotlib

    matplotlib.use("Agg")
    from runners.search.results import read_run_info

    info = read_run_info(run_dir)
    objectives = list(info.get("objectives") or ["val_accuracy"])
    trials = read_trials(run_dir)
    if not trials:
        raise SpecError("", f"{run_dir}: no finished trials yet (trials/*/metrics.json); nothing to report")
    done = [t for t in trials if t.state == "complete" and t.accuracy is not None and t.arch is not None]
    study, study_source = open_study(run_dir, info, trials, objectives)
    pngs, sections, notes = [], [], []

    figs = []  # (title, explanation, plotly figure)
    if study.get_trials(deepcopy=False, states=None):
        try:
            fig, png = history_figures(study, objectives, run_dir)
            figs.append(("Optimization history", f"{objectives[0]} of every trial in order, and the best so far "
                         f"(from {study_source}).", fig))
            pngs.append(png)
        except (ValueError, RuntimeError) as e:
            notes.append(f"history skipped: {e}")
    if done:
        fig, png = pareto_figures(done, run_dir)
        figs.append(("Pareto front", "Validation accuracy against cost; red: trials no other trial beats on both "
                     "(higher accuracy at lower cost). Hover a point for its blocks.", fig))
        pngs.append(png)
    imp, imp_note = importances(study, objectives)
    if imp:
        fig, png = importance_figures(imp, objectives[0], run_dir)
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
            png = run_dir / f"edf_{slug(label)}.png"
            png_edf(view, png)
            pngs.append(png)
    design = []
    if views:
        design.append("<h3>Which values help</h3><p class=note>For every value of every choice: the share of "
                      "its trials whose error is below the median error of all complete trials, with a 90% "
                      "interval (Jeffreys, on the effective number of trials). <b>helps</b>: the whole interval is "
                      "above 0.5; <b>hurts</b>: below. "
                      "<i>matched params/macs</i> reweights trials so that each complexity bucket counts equally "
                      "for every value (RegNet's normalized EDF), so a value is not credited for merely making "
                      "bigger networks. A trial counts for every value it contains (a stage with sk and se blocks "
                      "counts for both). Sorted by the size of the raw effect.</p>" + summary_rows(views))
        for view in views:
            design.append(f"<div class=choice><h3>{html.escape(view.label)}</h3>" + effects_table(view)
                          + f"<div class=plot>{plotly_edf(view).to_html(full_html=False, include_plotlyjs=False)}"
                          f"</div></div>")
    else:
        design.append(f"<p class=note>Skipped: {len(done)} complete trial(s); the design-space view needs at least 4 "
                      f"and a choice with two values that each have 2 trials.</p>")

    blocks = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.arch is None:
            continue
        try:
            text = block_diagram(t.arch)
        except SpecError as e:
            text = f"(cannot draw: {e})"
        acc = f"val {t.accuracy:.4f}" if t.accuracy is not None else t.state
        blocks.append(f"<details><summary>trial {t.number}: {acc}, {html.escape(str(t.get('blocks') or ''))}"
                      f"</summary><pre>{html.escape(text)}</pre></details>")
    spec_name, spec_text = _spec_text(run_dir, info)

    c = {s: sum(t.state == s for t in trials) for s in ("complete", "pruned", "failed")}
    best = max(done, key=lambda t: t.accuracy) if done else None
    head = (f"<h1>{html.escape(str(info.get('name')))}: search report</h1><p class=note>{len(trials)} trials "
            f"({c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed); objectives "
            f"{', '.join(objectives)}; engine {html.escape(str(info.get('backend', 'optuna')))}"
            + (f"; best: trial {best.number}, validation accuracy {best.accuracy:.4f}, "
               f"{fmt_count(best.get('params'))} params, blocks {html.escape(str(best.get('blocks')))}" if best else "")
            + ". Errors below are 1 - validation accuracy of complete trials; pruned and failed trials are left "
              "out of the EDFs.</p>")
    if views:
        sections.append("<h2>Findings</h2>" + headline(views, len(done)))
    for title, note, fig in figs:
        sections.append(f"<h2>{title}</h2><p class=note>{html.escape(note)}</p><div class=plot>"
                        f"{fig.to_html(full_html=False, include_plotlyjs=False)}</div>")
    if not imp:
        sections.append(f"<h2>Parameter importances</h2><p class=note>{html.escape(imp_note)}</p>")
    sections.append("<h2>Design space: error EDFs by choice</h2><p class=note>Each curve is the fraction of a "
                    "value's trials with error below x (Radosavovic et al. 2020, <i>Designing Network Design "
                    "Spaces</i>); a curve further up and left is better. Shaded: 90% bootstrap band. Legend: "
                    "value (trials).</p>" + "".join(design))
    sections.append("<h2>Trials</h2><p class=note>Click a column to sort.</p>" + trial_table(trials, objectives))
    sections.append("<h2>Block diagrams</h2>" + "".join(blocks))
    sections.append(f"<h2>Spec</h2><p class=note>{html.escape(spec_name)}</p><pre>{html.escape(spec_text)}</pre>")
    if notes:
        sections.append("<p class=note>" + "<br>".join(html.escape(n) for n in notes) + "</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(str(info.get('name')))} report"
            f"</title><style>{CSS}</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"<script>{SORT_JS}</script></head><body>{head}{''.join(sections)}</body></html>")
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return {"html": out, "png": pngs, "plots": len(figs) + len(views), "choices": [v.label for v in views]}
