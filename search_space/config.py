"""The ``train:`` and ``search:`` sections of a spec.

They are plain dataclasses validated by :mod:`search_space.schema`; any ``train`` value may be a choice (for
example ``lr``), so a search can tune the recipe with the architecture. ``search`` values are always fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from .schema import SpecError, _fmt, field, is_choice, largest

SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit

DATASETS = ("digits", "digits_hard", "digits_pairs", "cifar10", "cifar100", "imagefolder", "prepared", "synthetic")


@dataclass
class TrainConfig:
    dataset: Literal[DATASETS] = field(
        "digits", doc="digits ships with scikit-learn (no download); digits_hard: two distorted 32x32 copies of "
        "each digit (warps, clutter, noise; no download); digits_pairs: two digits side by side, 100 classes "
        "(no download); cifar10/cifar100/imagefolder read data_dir and prepare it once into a memory-mapped cache "
        "(SEARCH_DATA_CACHE); prepared reads a directory made by `search data prepare` (its splits are fixed there: "
        "val_fraction, test_fraction and seed do not change them)")
    data_dir: Optional[str] = field(None, doc="directory of cifar10/cifar100 python batches, of class folders "
                                    "(imagefolder) or of a prepared dataset (prepared)")
    image_size: Optional[int] = field(None, min=1, max=1024, doc="train at this size; null: the model's input_size")
    val_fraction: float = field(0.15, min=0.01, max=0.9, doc="share of the training data held out for validation")
    test_fraction: float = field(0.2, min=0.01, max=0.9,
                                 doc="share held out as test split where the dataset has none (digits, synthetic, "
                                 "imagefolder without train/ and test/ folders); its seed is fixed, not train.seed")
    train_fraction: float = field(1.0, min=0.01, max=1.0, doc="fidelity: share of the training rows used")
    epochs: int = field(8, min=1, max=100_000, doc="training epochs")
    time_budget: Optional[float] = field(None, min=0.0, doc="stop training after this many seconds")
    batch_size: int = field(128, min=1, max=65_536, doc="images per step")
    optimizer: Literal["sgd", "adamw"] = field("sgd", doc="sgd is Nesterov SGD")
    lr: float = field(0.1, min=0.0, doc="peak learning rate")
    momentum: float = field(0.9, min=0.0, max=1.0, doc="SGD momentum")
    weight_decay: float = field(5e-4, min=0.0, doc="weight decay (not applied to BN and biases)")
    label_smoothing: float = field(0.1, min=0.0, max=1.0, doc="label smoothing of the cross-entropy")
    schedule: Literal["cosine", "onecycle", "constant"] = field(
        "cosine", doc="per-step decay after warmup: cosine to zero, onecycle (linear to zero) or constant")
    warmup_epochs: float = field(1.0, min=0.0, max=100_000.0, doc="linear warmup length in epochs")
    restart_epochs: list[int] = field(
        default_factory=list, min=1, max=100_000, doc="pruning: epochs at which the schedule ends (decays to zero; "
        "constant: ends) and starts again with its warmup, so a rung there reads a complete short schedule rather "
        "than a high-lr snapshot of a long one; increasing, each cycle longer than the warmup; those at or past "
        "train.epochs are ignored, so a proxy and its longer runs (the audit's, --final-epochs) share the list",
        fixed=True)
    rung_ema_epochs: Optional[float] = field(
        None, min=0.01, max=100_000.0, doc="pruning: score every epoch but the last on an exponential moving average "
        "of the weights over about this many epochs (rung_accuracy, what pruners read; training is unchanged); "
        "null: the trained weights")
    crop_padding: Optional[int] = field(None, min=0, max=512, doc="random-crop padding in pixels (reflected); "
                                        "null: size // 8, at least 1; 0: no crop")
    flip: Optional[bool] = field(None, doc="random horizontal flips; null: on for cifar/imagefolder, off for "
                                 "digits and synthetic")
    amp: Literal["auto", "bf16", "fp16", "off"] = field("auto", doc="autocast; auto: bf16 on CUDA, off elsewhere")
    channels_last: Optional[bool] = field(None, doc="channels_last memory format; null: on for CUDA")
    compile: bool = field(False, doc="wrap the model in torch.compile")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = field(
        "default", doc="torch.compile mode with compile: true; reduce-overhead captures CUDA graphs, which cut the "
        "kernel-launch cost that dominates small proxy models on a GPU (off until benchmarks/cuda_step.py measures "
        "it; see docs/gpus.md)")
    fused_optimizer: bool = field(False, doc="the optimizer's fused CUDA kernel (one launch for all parameters "
                                  "instead of several per tensor); CUDA only, ignored elsewhere; off until measured")
    device: Literal["auto", "cuda", "mps", "cpu"] = field("auto", doc="auto picks cuda, then mps, then cpu")
    seed: int = field(0, min=0, max=SEED_MAX, doc="seed for data split, init and augmentation")
    synthetic_samples: int = field(512, min=2, max=1_000_000, doc="synthetic dataset: number of images")
    synthetic_classes: int = field(10, min=2, max=100_000, doc="synthetic dataset: number of classes")
    synthetic_channels: int = field(3, min=1, max=1024, doc="synthetic dataset: image channels")


@dataclass
class SearchConfig:
    trials: int = field(24, min=1, max=1_000_000,
                        doc="trials in the study (completed, pruned and failed ones count; a rerun or "
                        "another worker continues until the study holds this many)")
    timeout: Optional[float] = field(None, min=0.0, doc="stop starting new trials after this many seconds")
    sampler: Literal["tpe", "random", "gp", "nsga2"] = field(
        "tpe", doc="Optuna sampler: tpe (multivariate, grouped; constant liar with parallel workers), random, "
        "gp (Gaussian process), nsga2 (for several objectives)")
    startup_trials: Optional[int] = field(
        None, min=0, max=1_000_000, doc="random trials before tpe/gp model the results (nsga2: population size); "
        "null: trials // 4, between 3 and 10")
    pruner: Literal["hyperband", "median", "successive_halving", "none"] = field(
        "hyperband", doc="stops weak trials early on their per-epoch validation accuracy; with several objectives "
        "(val_accuracy among them) any but none is successive halving by non-dominated rank")
    pruner_min_epochs: int = field(1, min=1, max=100_000, doc="epochs every trial trains before it may be pruned "
                                   "(at least ceil(train.warmup_epochs) + 1: accuracy during warmup ranks nothing)")
    pruner_startup_trials: int = field(4, min=0, max=1_000_000, doc="median: trials that finish before pruning begins")
    objectives: list[Literal["val_accuracy", "params", "macs", "latency"]] = field(
        default_factory=lambda: ["val_accuracy"], doc="maximise val_accuracy, minimise the others (latency: ms per "
        "image of the trained model, batch 1, eval mode); several give a Pareto front")
    max_params: Optional[float] = field(None, min=0.0, doc="budget: reject samples with more parameters")
    max_macs: Optional[float] = field(None, min=0.0, doc="budget: reject samples with more MACs at input_size")
    storage: Optional[str] = field(None, doc="Optuna storage URL (sqlite:///..., postgresql://..., journal:PATH or "
                                             "a .log path); null: sqlite file study.db in the run directory")
    study_name: Optional[str] = field(None, doc="Optuna study name; null: the spec's name")
    seed: int = field(0, min=0, max=SEED_MAX, doc="sampler seed")
    workers: int = field(1, min=1, max=256, doc="local worker processes sharing the study (needs a storage other than "
                                       "SQLite)")
    trials_per_gpu: Union[int, Literal["auto"], None] = field(
        None, min=1, max=256, doc="pack trials onto one device (Optuna engine): this many trial processes share it, "
        "each admitted only when its predicted training memory (search compile --json, plus a margin) fits in a "
        "ledger the processes share; auto: as many as the CPU cores, at most 14 on a GPU; null: one trial at a "
        "time per process (see docs/gpus.md)")
    device_memory_mb: Optional[float] = field(
        None, min=1.0, doc="packing: MiB of device memory the ledger hands out (less a CUDA context per process); "
        "null: the GPU's total memory; needed to pack on the CPU, where it is a made-up card size")
    final_epochs: Optional[int] = field(None, min=1, max=100_000,
                                        doc="at the end, train the best architecture this many "
                                        "epochs and score it once on the test split; null: skip")
    keep_weights: int = field(3, min=0, max=1_000_000,
                              doc="complete trials whose trained weights stay in trials/<n>/weights.pt: the best k "
                                  "by the first objective (0: none); search export RUN and create_model(run=RUN) "
                                  "give the best. Each costs about 4 bytes per parameter")
    top: int = field(10, min=1, max=100_000, doc="rows of the results table")
    backend: Literal["optuna", "ray"] = field(
        "optuna", doc="engine: optuna (local processes; SQLite, journal or RDB storage) or ray (Ray Tune on a local "
        "or existing Ray cluster; see `search run --address`)")
    warm_start: list[str] = field(default_factory=list, doc="architecture YAML files (relative to the spec) to try "
                                  "first; one outside the space is trained as written, at the run's input size")


def storage_kind(url: Optional[str], path: str = "search.storage") -> str:
    """'sqlite', 'journal' or 'rdb' for a storage URL as ``search run`` reads it (null: the SQLite file
    study.db); a URL no storage can be opened from raises SpecError. Syntax only: nothing is opened."""
    if url is None:
        return "sqlite"
    allowed = "use sqlite:///FILE.db, FILE.db, journal:FILE, FILE.log, or an RDB URL such as postgresql+psycopg://..."
    if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
        if not url.removeprefix("journal:").strip():
            raise SpecError(path, f"{_fmt(url)} names no journal file; {allowed}")
        return "journal"
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return "sqlite"
        raise SpecError(path, f"{_fmt(url)} is not a storage; {allowed}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            parsed.get_dialect()  # imports SQLAlchemy's dialect class only: no driver, no connection
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise SpecError(path, f"{_fmt(url)} is not a storage URL ({short_reason(e)}); {allowed}") from None
    if parsed.get_backend_name() != "sqlite":
        return "rdb"
    if parsed.database in (None, "", ":memory:") or "mode=memory" in url:
        raise SpecError(path, f"{_fmt(url)} is an in-memory database: the study would vanish with the process "
                              f"and no worker could share it; {allowed}")
    return "sqlite"


def short_reason(e: Exception) -> str:
    return _fmt(str(e).splitlines()[0] if str(e) else type(e).__name__).strip("'")


MAX_WARM_STARTS = 200


def check_train(train: TrainConfig, path: str = "train") -> None:
    """What the field rules cannot say alone: restart epochs in increasing order, each after the warmup (a cycle
    that is all warmup would end at the peak learning rate, not decayed)."""
    restarts = train.restart_epochs
    if any(b <= a for a, b in zip(restarts, restarts[1:])):
        raise SpecError(f"{path}.restart_epochs", f"{_fmt(restarts)} is not in increasing order; list each epoch "
                                                  f"once, smallest first")
    check_splits(train, path)
    warmup = train.warmup_epochs
    longest = largest(warmup)  # the longest warmup a choice may draw
    gaps = [b - a for a, b in zip([0, *restarts], restarts)]
    if restarts and isinstance(longest, (int, float)) and min(gaps) <= longest:
        raise SpecError(f"{path}.restart_epochs", f"{_fmt(restarts)} leaves a cycle of {min(gaps)} epoch(s), not "
                                                  f"longer than train.warmup_epochs ({_fmt(warmup)}): each cycle "
                                                  f"must warm up and then decay")


def _taken(count: int, fraction: float) -> int:
    """Rows a split takes from a class of ``count`` rows (runners.data.stratified_split's rule: at least one and
    never all of a class of two or more; tests hold the two equal)."""
    n = int(round(count * fraction))
    if count >= 2:
        n = min(max(n, 1), count - 1) if fraction < 1.0 else count
    return n


def synthetic_rows(train: TrainConfig) -> tuple[int, int]:
    """(training rows, validation rows) the synthetic dataset's splits leave: its classes hold samples // classes
    or one more rows each; the test split is held out first, validation from the rest, then train_fraction."""
    q, r = divmod(train.synthetic_samples, train.synthetic_classes)
    rows = {"train": 0, "val": 0}
    for size, classes in ((q, train.synthetic_classes - r), (q + 1, r)):
        pool = size - _taken(size, train.test_fraction)
        val = _taken(pool, train.val_fraction)
        kept = pool - val
        kept = _taken(kept, train.train_fraction) if train.train_fraction < 1.0 else kept
        rows["train"] += kept * classes
        rows["val"] += val * classes
    return rows["train"], rows["val"]


def check_splits(train: TrainConfig, path: str = "train") -> None:
    """Refuse fractions that leave the synthetic dataset no training or validation rows (its size is in the spec,
    so `search validate` can tell). Every other dataset is accepted whatever the fractions, rightly: each split
    takes at least one row and never all rows of a class with two or more, so digits, digits_hard, digits_pairs and
    cifar (hundreds of rows per class) keep rows on every side at any fractions the fields allow; an image folder's
    size is known only from its files, which `search run` checks before any trial."""
    values = (train.synthetic_samples, train.synthetic_classes, train.test_fraction, train.val_fraction,
              train.train_fraction)
    if train.dataset != "synthetic" or any(is_choice(v) for v in values):
        return
    rows, val = synthetic_rows(train)
    if rows == 0 or val == 0:
        per_class = train.synthetic_samples / train.synthetic_classes
        raise SpecError(f"{path}.synthetic_samples", f"{train.synthetic_samples} samples in "
                        f"{train.synthetic_classes} classes ({per_class:.3g} per class) leave no "
                        f"{'training' if rows == 0 else 'validation'} rows after the test split "
                        f"({_fmt(train.test_fraction)}), the validation split ({_fmt(train.val_fraction)}) and "
                        f"train_fraction ({_fmt(train.train_fraction)}); use at least 3 samples per class")


def check_search(search: SearchConfig, path: str = "search") -> None:
    """What ``search run`` refuses before it starts, checked when a spec loads and again after the command-line
    overrides, so ``search validate`` accepts exactly what ``search run`` accepts: objectives named once each, a
    storage URL that can name a storage, several workers only on a storage they can share, warm-start files that
    exist. Pure: syntax and file existence only, no network."""
    objectives = list(search.objectives)
    if not objectives:
        raise SpecError(f"{path}.objectives", "[] is empty; name at least one of val_accuracy, params, macs, latency")
    twice = next((o for i, o in enumerate(objectives) if o in objectives[:i]), None)
    if twice is not None:
        raise SpecError(f"{path}.objectives", f"{_fmt(objectives)} names {twice!r} twice; name each objective once")
    kind = storage_kind(search.storage, f"{path}.storage")
    if kind == "sqlite" and search.workers > 1:
        where = "the default SQLite file" if search.storage is None else _fmt(search.storage)
        raise SpecError(f"{path}.workers", f"{search.workers} workers cannot share {where} (SQLite's file lock does "
                                           f"not suit several writers); set storage to journal:FILE or an RDB URL")
    if len(search.warm_start) > MAX_WARM_STARTS:  # each is a file read and checked before the search starts
        raise SpecError(f"{path}.warm_start", f"{len(search.warm_start):,} files; at most {MAX_WARM_STARTS} warm "
                                              f"starts (they are tried before the sampler's own trials)")
    for i, warm in enumerate(search.warm_start):
        if not Path(warm).is_file():
            raise SpecError(f"{path}.warm_start.{i}", f"{_fmt(str(warm))}: no such file")
