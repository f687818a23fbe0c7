"""The proxy training loop: short, fast and unable to crash the caller.

A search trains hundreds of candidates, so this loop follows the fast public CIFAR trainers (DESIGN.md
section 6): the uint8 data sits on the device, each batch is cropped and flipped there with one gather, inputs
and weights may be channels_last under bf16 autocast, and the optimiser is Nesterov SGD (or AdamW) with label
smoothing and a per-step warmup-then-decay schedule. There is no DataLoader and no per-sample Python.

A candidate that diverges, runs out of memory or raises inside its forward pass must only fail *its* trial, so
:func:`train` never raises for those: it returns a :class:`TrainResult` whose ``status`` says what happened.
Bad input found before training starts (missing data directory, unavailable device) raises
:class:`~search_space.schema.SpecError`, and exceptions raised by the caller's own ``report``/``on_step``
callbacks (``optuna.TrialPruned`` for example) propagate unchanged.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_space.config import TrainConfig

from runners.training.data import Dataset, load_dataset
from runners.training.device import free_memory, is_oom, peak_memory_mb, resolve_device, seed_everything

STATUSES = ("ok", "stopped", "diverged", "oom", "error", "interrupted")
CHECK_EVERY = 16  # steps between finiteness checks of the loss; each check is one host-device sync
ON_STEP_INTERVAL = 0.5  # seconds between on_step calls

Report = Callable[[int, dict], Any]
OnStep = Callable[[int, int, int], Any]


@dataclass
class TrainResult:
    """What one training run produced. ``model`` is the trained module (in eval mode); it is ``None`` when the
    run diverged, ran out of memory or failed, since such weights are worthless and may hold device memory."""

    status: str
    reason: str = ""
    epochs: int = 0
    history: list[dict] = field(default_factory=list)
    val_accuracy: Optional[float] = None
    best_val_accuracy: Optional[float] = None
    test_accuracy: Optional[float] = None
    seconds: float = 0.0
    params: Optional[int] = None
    device: str = "cpu"
    traceback: Optional[str] = field(default=None, repr=False)
    model: Optional[nn.Module] = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        """Plain JSON data (no model); non-finite numbers become null so the output is strict JSON."""
        return _finite({f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"})


def train(arch_or_model, config: TrainConfig, report: Optional[Report] = None, data: Optional[Dataset] = None,
          device: torch.device | str | None = None, image_size: Optional[int] = None, evaluate_test: bool = False,
          on_step: Optional[OnStep] = None) -> TrainResult:
    """Train an architecture (built here with ``search_space.compiler.build_model``) or a ready ``nn.Module``.

    ``report(epoch, metrics)`` runs after every epoch; a truthy return stops training with status ``stopped``
    (how pruners end a trial). ``on_step(epoch, step, steps)`` runs at most every half second, for progress
    display. Image size: the ``image_size`` argument, else ``config.image_size``, else the architecture's
    ``input_size``, else the data's native size. ``data`` may be a preloaded :class:`Dataset` (resized if
    needed); it is moved to the device once and kept there for later trials. The test split is scored only
    with ``evaluate_test`` and only for a run that ended ``ok``.
    """
    device = resolve_device(device if device is not None else config.device)
    is_module = isinstance(arch_or_model, nn.Module)
    size = image_size or config.image_size or (None if is_module else getattr(arch_or_model, "input_size", None))
    if data is None:
        data = load_dataset(config, size)
    elif size is not None:
        data = data.resized(size)

    state = _State(device=str(device))
    start = time.perf_counter()
    try:
        _fit(state, arch_or_model, config, data, device, report, on_step, evaluate_test, start)
    except _CallbackError as e:
        raise e.error from None
    except KeyboardInterrupt as e:
        from runners.common.signals import release

        release(e)  # a stop inside a storage call (a pruner's read) must not leave the study locked
        state.status = "interrupted"
        state.reason = f"interrupted by the user after {state.epochs} epoch(s)"
    except _Diverged as e:
        state.fail("diverged", str(e))
    except Exception as e:  # noqa: BLE001 - a failing candidate must not end the search
        if is_oom(e):
            state.fail("oom", f"out of memory on {device}: {_first_line(e)}")
        else:
            where = "" if is_module else f" [arch: {describe_arch(arch_or_model)}]"
            state.fail("error", f"{type(e).__name__}: {_first_line(e)}{where}", traceback.format_exc())
    if state.status in ("oom", "diverged", "error"):
        free_memory(device)  # after the except blocks, so the traceback's frames no longer pin tensors
    state.seconds = time.perf_counter() - start
    return state.result()


def save_run(out, spec, result: TrainResult, data: Optional[Dataset] = None, **extra) -> list[str]:
    """Write what a training run produced into ``out``: ``arch.yaml`` (the spec as trained), ``weights.pt`` (a state
    dict that ``torch.load(..., weights_only=True)`` reads; only when there is a model), ``preprocess.json`` (how
    the inputs were made: size, mean/std, resize rule, class names; from ``data``, the dataset it trained on) and
    ``metrics.json`` (``extra`` keys, the preprocessing, then the result). Returns the names written. ``search
    train``, a search's trials and its final training share it, so their outputs look alike."""
    import json
    from pathlib import Path

    from search_space.spec import dump_spec

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = ["metrics.json", "arch.yaml"]
    (out / "arch.yaml").write_text(dump_spec(spec), encoding="utf-8")
    if result.model is not None:
        save_weights(out / "weights.pt", result.model)
        saved.insert(0, "weights.pt")
    if data is not None:
        pre = preprocess_of(data)
        pre.write(out)
        saved.insert(-2, "preprocess.json")
        extra = {**extra, "preprocess": pre.to_json()}
    metrics = _finite({**extra, **result.to_json()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return saved


def save_weights(path, model: nn.Module) -> None:
    """The model's state_dict on the CPU, written atomically (a reader never loads half a file)."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def preprocess_of(data: Dataset):
    """How ``data``'s images reach the network (:class:`search_space.preprocess.Preprocess`), read only through
    what the Dataset exposes (channels, image size, mean, std, classes, name)."""
    from search_space.preprocess import Preprocess

    return Preprocess.from_dataset(data)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Everything :func:`train` returns, updated as the run goes so a failure keeps what was done."""

    device: str
    status: str = "ok"
    reason: str = ""
    epochs: int = 0
    history: list = field(default_factory=list)
    test_accuracy: Optional[float] = None
    params: Optional[int] = None
    seconds: float = 0.0
    traceback: Optional[str] = None
    model: Optional[nn.Module] = None

    def fail(self, status: str, reason: str, tb: Optional[str] = None) -> None:
        self.status, self.reason, self.traceback, self.model = status, reason, tb, None

    def result(self) -> TrainResult:
        accs = [h["val_accuracy"] for h in self.history]
        return TrainResult(status=self.status, reason=self.reason, epochs=self.epochs, history=self.history,
                           val_accuracy=accs[-1] if accs else None, best_val_accuracy=max(accs) if accs else None,
                           test_accuracy=self.test_accuracy, seconds=round(self.seconds, 3), params=self.params,
                           device=self.device, traceback=self.traceback, model=self.model)


class _Diverged(Exception):
    pass


class _CallbackError(Exception):
    """Carries an exception raised by the caller's callback past the catch-all, to be re-raised as is."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _callback(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        raise _CallbackError(e) from e


def _fit(state: _State, arch_or_model, config: TrainConfig, data: Dataset, device: torch.device,
         report: Optional[Report], on_step: Optional[OnStep], evaluate_test: bool, start: float) -> None:
    seed_everything(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    data = data.to(device)
    if isinstance(arch_or_model, nn.Module):
        model = arch_or_model
    else:
        from search_space.compiler import build_model

        model = build_model(arch_or_model, in_channels=data.channels, num_classes=data.num_classes)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    state.model = model
    state.params = sum(p.numel() for p in model.parameters())
    forward = torch.compile(model, mode=config.compile_mode) if config.compile else model

    amp_dtype = amp_dtype_for(config.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    optimizer = make_optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    norm = Normalize(data, channels_last)
    pad = default_padding(data.image_size) if config.crop_padding is None else config.crop_padding
    flip = config.flip if config.flip is not None else data.name in ("cifar10", "cifar100", "imagefolder")
    augment = Augment(data.train_x, pad, flip, config.seed, device=data.device, stream=data.streamed is not None)

    n = len(data.train_y)
    batch = min(config.batch_size, n)
    steps = n // batch  # the incomplete last batch is dropped: uniform shapes suit cudnn and compile
    schedule = LRSchedule(config.lr, config.schedule, round(config.warmup_epochs * steps), config.epochs * steps,
                          restarts=[e * steps for e in config.restart_epochs])
    budget = config.time_budget
    last_tick = time.perf_counter()
    global_step = 0
    ema = rung_average(model, config, steps)

    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = augment.new_epoch(n)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        done = 0
        out_of_time = False
        for step in range(steps):
            rows = slice(step * batch, (step + 1) * batch)
            x = norm(augment(order, rows))
            y = data.train_y[order[rows]]
            lr = schedule(global_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, amp_dtype):
                out = forward(x)
                loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach().float()
            correct += (out.argmax(1) == y).sum()
            done += 1
            global_step += 1
            if done % CHECK_EVERY == 0:
                _check_finite(loss_sum, epoch, done, lr)
            if budget is not None and time.perf_counter() - start >= budget:
                out_of_time = True
                break
            if on_step is not None and time.perf_counter() - last_tick >= ON_STEP_INTERVAL:
                last_tick = time.perf_counter()
                _callback(on_step, epoch, done, steps)
        _check_finite(loss_sum, epoch, done, lr)
        train_loss = loss_sum.item() / done
        train_seconds = time.perf_counter() - t0

        val_loss, val_acc = evaluate_split(forward, data.val_x, data.val_y, norm, amp_dtype, batch)
        now = time.perf_counter()
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": correct.item() / (done * batch),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "images_per_s": done * batch / train_seconds,
            "epoch_seconds": now - t0,
            "seconds": now - start,
            "peak_memory_mb": peak_memory_mb(device),
            "lr": lr,
        }
        if ema is not None and epoch < config.epochs and epoch not in config.restart_epochs:
            # a rung: what a pruner reads (the last epoch is no rung; at a restart the decayed weights are read)
            metrics["rung_accuracy"] = evaluate_split(ema, data.val_x, data.val_y, norm, amp_dtype, batch)[1]
        if out_of_time:
            metrics["partial"] = done < steps
        state.history.append(metrics)
        state.epochs = epoch if done == steps else epoch - 1
        if report is not None and _callback(report, epoch, dict(metrics)):
            state.status = "stopped"
            state.reason = f"stopped by the report callback after epoch {epoch}"
            break
        if out_of_time:
            state.reason = (f"time budget of {budget:g}s reached in epoch {epoch} "
                            f"({done}/{steps} steps); {state.epochs} full epoch(s) trained")
            break

    model.eval()
    if evaluate_test and state.status == "ok":
        _, state.test_accuracy = evaluate_split(forward, data.test_x, data.test_y, norm, amp_dtype, batch)


def rung_average(model: nn.Module, config: TrainConfig, steps: int) -> Optional[nn.Module]:
    """An exponential moving average of the weights (and BN statistics) over ``config.rung_ema_epochs`` epochs,
    or None. Before the last epoch the learning rate is still high and the trained weights are noisy, so their
    accuracy ranks architectures worse than a complete schedule does; the average is the cheaper, steadier
    estimate a pruner can read at a rung (``search fidelity`` measures both)."""
    if config.rung_ema_epochs is None or config.epochs < 2:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    decay = 1.0 - 1.0 / max(1.0, config.rung_ema_epochs * steps)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise _Diverged(f"training loss became {value} in epoch {epoch} (by step {step}, lr {lr:.4g}); "
                        f"try a lower learning rate")


@torch.no_grad()
def evaluate_split(forward: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: "Normalize",
                   amp_dtype: Optional[torch.dtype], batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy, in eval mode with batches larger than training's."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = forward.training
    forward.eval()
    device = y.device  # images may be streamed from the host (see Augment)
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    size = max(2 * batch_size, 256)
    for start in range(0, len(y), size):
        xb, yb = norm(to_device(x[start:start + size], device)), y[start:start + size]
        with autocast(device, amp_dtype):
            out = forward(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    forward.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def evaluate(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 256, amp: str = "off",
             channels_last: bool = False) -> dict:
    """Score a trained model on one split of ``data`` (on the model's device): ``{"loss": .., "accuracy": ..}``."""
    device = next(model.parameters()).device
    data = data.to(device)
    loss, acc = evaluate_split(model, getattr(data, f"{split}_x"), getattr(data, f"{split}_y"),
                               Normalize(data, channels_last), amp_dtype_for(amp, device), batch_size)
    return {"loss": loss, "accuracy": acc}


# ----------------------------------------------------------------------------------------------------------------
# Pieces of the loop
# ----------------------------------------------------------------------------------------------------------------


class Normalize:
    """uint8 images to normalised float32 in one multiply-add, in the memory format the model uses."""

    def __init__(self, data: Dataset, channels_last: bool):
        std = torch.tensor(data.std, dtype=torch.float32, device=data.device).view(1, -1, 1, 1)
        mean = torch.tensor(data.mean, dtype=torch.float32, device=data.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale)


class Augment:
    """Random crop (reflect padding) and horizontal flip of whole batches with one gather on the device.

    The permutation, crop offsets and flips of an epoch are drawn at once on the CPU from a generator seeded
    by ``train.seed`` and moved to the device in one copy, so runs are repeatable on any device.

    Streamed data (``device`` other than the images', or ``stream``: see ``Dataset.to``) is gathered where the
    images are, on the host (from the memory map of a prepared dataset), and each batch is sent to ``device``
    through pinned memory without waiting, so the host gathers the next batch while the device trains on this
    one. The batches are the same as unstreamed ones: the same draws index the same images.
    """

    def __init__(self, images: torch.Tensor, pad: int, flip: bool, seed: int,
                 device: Optional[torch.device] = None, stream: bool = False):
        self.images = images
        h, w = images.shape[-2:]
        self.pad = max(0, min(pad, h - 1, w - 1))  # reflection needs pad < size
        self.flip = flip
        self.gen = torch.Generator().manual_seed(seed)
        self.target = torch.device(device) if device is not None else images.device
        self.stream = stream or self.target != images.device
        self.device = images.device  # where the gather runs
        self.ar_h = torch.arange(h, device=self.device)
        self.ar_w = torch.arange(w, device=self.device)
        self.active = self.pad > 0 or flip

    def new_epoch(self, n: int) -> torch.Tensor:
        """The epoch's sample order; crop offsets and flips are drawn alongside it."""
        order = torch.randperm(n, generator=self.gen)
        if self.active:
            shifts = torch.randint(0, 2 * self.pad + 1, (2, n), generator=self.gen) - self.pad
            flips = torch.rand(n, generator=self.gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
            order, shifts, flips = (t.to(self.device, non_blocking=True) for t in (order, shifts, flips))
            self.dy, self.dx, self.flips = shifts[0], shifts[1], flips
        return order.to(self.device, non_blocking=True)

    def __call__(self, order: torch.Tensor, rows: slice) -> torch.Tensor:
        idx = order[rows]
        if not self.active:
            return self._send(self.images[idx])
        h, w = len(self.ar_h), len(self.ar_w)
        ys = _reflect(self.ar_h + self.dy[rows, None], h)
        xs = self.ar_w + self.dx[rows, None]
        xs = _reflect(torch.where(self.flips[rows, None], xs.flip(1), xs), w)
        # advanced indices around a slice put the batch dims first: N x H x W x C, i.e. NCHW in channels_last
        return self._send(self.images[idx[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2))

    def _send(self, batch: torch.Tensor) -> torch.Tensor:
        return to_device(batch, self.target) if self.stream else batch


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; from the host to a GPU through pinned (page-locked) memory, without waiting."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices that fall outside 0..n-1 back inside (reflect padding without copying the image)."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def default_padding(size: int) -> int:
    return max(1, size // 8)


class LRSchedule:
    """Linear warmup to ``peak`` over ``warmup`` steps, then ``cosine`` to zero, ``onecycle`` (linear to zero:
    with the warmup, the one-cycle triangle) or ``constant``; evaluated per step.

    ``restarts`` (steps, train.restart_epochs) cut the run into cycles, each a complete schedule of its own
    (SGDR): the first cycle is exactly the schedule of a run that ends at the first restart, so a pruner's rung
    there reads what a complete short run would reach."""

    def __init__(self, peak: float, kind: str, warmup: int, total: int, restarts: Sequence[int] = ()):
        self.peak, self.kind, self.total = peak, kind, max(1, total)
        self.warmup = min(max(0, warmup), self.total)
        self.starts = [0] + sorted({r for r in restarts if 0 < r < self.total})
        self.cycles = ([LRSchedule(peak, kind, warmup, end - start)
                        for start, end in zip(self.starts, self.starts[1:] + [self.total])]
                       if len(self.starts) > 1 else None)

    def __call__(self, step: int) -> float:
        if self.cycles:
            i = bisect.bisect_right(self.starts, step) - 1
            return self.cycles[i](step - self.starts[i])
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.peak
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "cosine":
            return self.peak * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak * (1.0 - progress)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov SGD or AdamW; weight decay only on weight matrices and kernels, not on BN parameters or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # fused kernels exist for CUDA tensors only; elsewhere (and by default) the per-tensor loop
    fused = {"fused": True} if config.fused_optimizer and params and params[0].is_cuda else {}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, **fused)


def amp_dtype_for(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def describe_arch(arch, limit: int = 300) -> str:
    """One line naming an architecture, for error reasons: its ``describe()`` if it has one, else its YAML in
    flow style (``search_space.spec.model_to_yaml``), else its repr; cut at ``limit`` characters."""
    try:
        describe = getattr(arch, "describe", None)
        if callable(describe):
            text = describe()
        else:
            import yaml

            from search_space.spec import model_to_yaml

            text = yaml.safe_dump(model_to_yaml(arch), default_flow_style=True, width=10**9, sort_keys=False)
    except Exception:  # noqa: BLE001 - describing must not mask the real error
        text = repr(arch)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
