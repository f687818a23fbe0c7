"""The rules both engines share: which sampler a spec asks for (seeded per trial), where warmup ends, the first
epoch a pruner may read, the rungs of multi-objective successive halving and the longest trial.

They live here, not in either engine, so the Optuna engine and the Ray engine read one definition and neither
imports the other.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.samplers._lazy_random_state import LazyRandomState

from search_space.config import SearchConfig
from search_space.schema import largest
from search_space.spec import Spec

from .mo_pruning import rungs


MO_REDUCTION_FACTOR = 3  # several objectives: a third of the trials at the rung continue (as Hyperband, eta 3)


def startup_trials(search: SearchConfig) -> int:
    return search.startup_trials if search.startup_trials is not None else min(10, max(3, search.trials // 4))


class PerTrialSeed(optuna.samplers.BaseSampler):
    """Reseeds the wrapped sampler from (seed, trial number) before every trial.

    A trial's random draws then depend on its number only, not on the process or the storage: a single process
    reproduces a run on SQLite and on a journal file alike, and processes sharing a study never draw the same
    random trials (they never get the same number). A sampler's inner random sampler gets the same seed, so the
    startup trials of TPE or GP are the trials random search draws with that seed: comparing samplers at one seed
    is then paired on those trials (common random numbers), and only what the sampler learned differs."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, seed: int):
        self.sampler = sampler
        self.seed = seed

    def _reseed(self, obj, seed: int, depth: int = 0) -> None:
        for name, value in list(vars(obj).items()):
            if isinstance(value, LazyRandomState):
                setattr(obj, name, LazyRandomState(seed))
            elif depth < 2 and (isinstance(value, optuna.samplers.BaseSampler) or hasattr(value, "_rng")):
                self._reseed(value, seed, depth + 1)

    def before_trial(self, study, trial):
        self._reseed(self.sampler, (self.seed * 1_000_003 + trial.number * 7_919) % 2**32)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def make_sampler(search: SearchConfig, n_objectives: int, parallel: bool, seed: int) -> optuna.samplers.BaseSampler:
    startup = startup_trials(search)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate / group TPE and GPSampler warn that they are experimental
        if search.sampler == "tpe":
            # multivariate + group: per-block choices exist only in some trials and must be modelled jointly;
            # constant liar: parallel workers do not all pick the same promising point.
            return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed, n_startup_trials=startup,
                                              constant_liar=parallel, warn_independent_sampling=False)
        if search.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if search.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup))


def warmup_end(spec: Spec) -> int:
    """The first epoch whose accuracy was not measured during warmup (warmup epochs rounded up, plus one)."""
    return math.ceil(float(largest(spec.train.warmup_epochs))) + 1


def first_rung(search: SearchConfig, epochs: int, first_epoch: int = 1) -> int:
    """The first epoch a pruner may read: ``pruner_min_epochs``, never before ``first_epoch`` (the end of warmup),
    never past the last epoch. Every pruner, on both engines, starts here."""
    return min(max(search.pruner_min_epochs, first_epoch), epochs)


def mo_rungs(search: SearchConfig, epochs: int, objectives: list[str], first_epoch: int = 1) -> list[int]:
    """Rung epochs of multi-objective successive halving (none for one objective or without a pruner).

    One cut only, at the first epoch after warmup (or ``pruner_min_epochs``): a Pareto front needs survivors,
    and a second cut keeps a ninth of the trials. Replayed on the fidelity audit's training curves, a second rung
    lost front members (benchmarks/README.md, "Pruning for several objectives")."""
    if len(objectives) < 2 or "val_accuracy" not in objectives or search.pruner == "none":
        return []
    return rungs(first_rung(search, epochs, first_epoch), epochs, MO_REDUCTION_FACTOR)[:1]


def max_epochs(spec: Spec) -> int:
    return largest(spec.train.epochs)

