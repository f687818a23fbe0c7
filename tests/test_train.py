"""The proxy training loop: it really learns, it fails softly, and its pieces do what they claim."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from runners.training.data import load_dataset
from runners.common.progress import Progress, bar, count, duration
from runners.training.loop import Augment, LRSchedule, TrainResult, make_optimizer, train
from runners.training.device import resolve_device
from search_space.config import TrainConfig
from search_space.schema import SpecError

TINY_ARCH = """\
name: tiny
model:
  input_size: 8
  stem: {type: cifar, width: 16}
  stages:
    - {depth: 1, width: 16, stride: 1, block: {type: plain, bottleneck: false}}
    - {depth: 1, width: 32, stride: 2, block: {type: plain, bottleneck: false}}
train: {epochs: 1, batch_size: 32, lr: 0.1}
"""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and one thread keeps timings steady on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(TrainConfig())


def small_cnn(in_channels=1, classes=10, width=16):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 16, classes))


FAST = TrainConfig(epochs=1, batch_size=64, lr=0.05)


class Failing(nn.Module):
    """Runs a few batches normally, then misbehaves the way the test asks."""

    def __init__(self, how: str, after: int = 2):
        super().__init__()
        self.net, self.how, self.after, self.calls = small_cnn(), how, after, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        if self.training and self.calls > self.after:
            if self.how == "nan":
                return out * float("nan")
            if self.how == "error":
                raise ValueError("shapes do not line up in block 3")
            if self.how == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            if self.how == "interrupt":
                raise KeyboardInterrupt
        return out


# ----------------------------------------------------------------------------------------------------------------
# It learns
# ----------------------------------------------------------------------------------------------------------------


def test_a_small_cnn_learns_digits(digits):
    seen = []
    result = train(small_cnn(), replace(FAST, epochs=3, batch_size=32, lr=0.1), data=digits, evaluate_test=True,
                   report=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert result.status == "ok" and result.reason == ""
    assert result.val_accuracy > 0.8 and result.test_accuracy > 0.8
    assert result.epochs == 3 and [e for e, _ in seen] == [1, 2, 3] and len(result.history) == 3
    assert result.best_val_accuracy == max(h["val_accuracy"] for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "images_per_s", "epoch_seconds",
                "seconds", "peak_memory_mb", "lr"):
        assert isinstance(seen[-1][1][key], float) and math.isfinite(seen[-1][1][key]), key
    assert result.params == sum(p.numel() for p in result.model.parameters())
    assert not result.model.training and result.device == resolve_device("auto").type  # cuda where there is one
    text = json.dumps(result.to_json(), allow_nan=False)
    assert "model" not in json.loads(text) and json.loads(text)["status"] == "ok"


def test_the_same_seed_gives_the_same_run(digits):
    cfg = replace(FAST, flip=True)
    a = train(small_cnn(), cfg, data=digits)
    b = train(small_cnn(), cfg, data=digits)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


def test_an_architecture_is_built_at_its_input_size(tmp_path, digits):
    from search_space.spec import load_spec

    spec = load_spec(TINY_ARCH)
    result = train(spec.model, replace(spec.train, image_size=None), data=digits)
    assert result.status == "ok", result.reason
    assert result.model.cpu()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    resized = train(spec.model, replace(spec.train, image_size=12), data=digits, evaluate_test=True)
    assert resized.status == "ok" and resized.test_accuracy is not None


# ----------------------------------------------------------------------------------------------------------------
# It fails softly
# ----------------------------------------------------------------------------------------------------------------


def test_a_huge_learning_rate_diverges(digits):
    result = train(small_cnn(), replace(FAST, lr=1e6, epochs=3), data=digits)
    assert result.status == "diverged" and "loss became" in result.reason
    assert result.model is None and result.epochs < 3


def test_nan_outputs_are_divergence(digits):
    result = train(Failing("nan"), FAST, data=digits)
    assert result.status == "diverged" and "nan" in result.reason


def test_an_exception_in_the_model_is_an_error_result(digits):
    result = train(Failing("error"), replace(FAST, epochs=2), data=digits)
    assert result.status == "error" and result.model is None
    assert "ValueError: shapes do not line up in block 3" in result.reason
    assert "forward" in result.traceback


def test_an_architecture_that_cannot_be_built_is_described_in_the_error(digits):
    from search_space.spec import load_spec

    spec = load_spec(TINY_ARCH)
    arch = replace(spec.model, stages=[replace(spec.model.stages[0], width=-3)])
    result = train(arch, spec.train, data=digits)
    assert result.status == "error" and "[arch: {" in result.reason and "width: -3" in result.reason


def test_out_of_memory_is_its_own_status(digits):
    result = train(Failing("oom"), FAST, data=digits)
    assert result.status == "oom" and "out of memory" in result.reason and result.model is None


def test_keyboard_interrupt_returns_an_interrupted_result(digits):
    result = train(Failing("interrupt", after=20), replace(FAST, epochs=3), data=digits)
    assert result.status == "interrupted" and result.epochs == 1 and result.model is not None


def test_report_returning_true_stops_the_run(digits):
    result = train(small_cnn(), replace(FAST, epochs=5), data=digits, report=lambda epoch, m: epoch >= 2)
    assert result.status == "stopped" and result.epochs == 2 and len(result.history) == 2
    assert result.model is not None and result.test_accuracy is None


def test_exceptions_from_the_callback_propagate(digits):
    class Pruned(Exception):
        pass

    def report(epoch, metrics):
        raise Pruned()

    with pytest.raises(Pruned):
        train(small_cnn(), FAST, data=digits, report=report)


def test_on_step_reports_progress_within_an_epoch(digits, monkeypatch):
    import runners.training.loop

    monkeypatch.setattr(runners.training.loop, "ON_STEP_INTERVAL", 0.0)
    ticks = []
    train(small_cnn(), FAST, data=digits, on_step=lambda *a: ticks.append(a))
    steps = len(digits.train_y) // FAST.batch_size
    assert ticks[0] == (1, 1, steps) and ticks[-1] == (1, steps - 1, steps) or ticks[-1] == (1, steps, steps)


def test_time_budget_stops_early_with_status_ok(digits):
    result = train(small_cnn(), replace(FAST, epochs=50, time_budget=0.0), data=digits)
    assert result.status == "ok" and result.epochs == 0 and "time budget" in result.reason
    assert len(result.history) == 1 and result.history[0]["partial"] is True
    assert result.val_accuracy is not None


def test_an_unavailable_device_is_bad_input(digits):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SpecError, match="cuda"):
        train(small_cnn(), replace(FAST, device="cuda"), data=digits)


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def test_weights_reload_with_weights_only_into_a_fresh_model(tmp_path, digits):
    result = train(small_cnn(), FAST, data=digits)
    path = tmp_path / "weights.pt"
    torch.save(result.model.state_dict(), path)
    fresh = small_cnn(width=16)
    torch.manual_seed(1)
    for p in fresh.parameters():
        nn.init.normal_(p)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        # the model stays on the device (and in the memory format: channels_last on CUDA) it trained in
        assert torch.equal(fresh(x), result.model.cpu().to(memory_format=torch.contiguous_format)(x))


# ----------------------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------------------


def test_augment_matches_reflect_padded_crops_and_flips():
    images = torch.randint(0, 256, (40, 3, 9, 7), dtype=torch.uint8)
    aug = Augment(images, pad=3, flip=True, seed=0)
    order = aug.new_epoch(40)
    out = aug(order, slice(4, 24))
    assert out.shape == (20, 3, 9, 7) and out.dtype == torch.uint8
    padded = F.pad(images.float(), (3, 3, 3, 3), mode="reflect")
    for j, i in enumerate(range(4, 24)):
        dy, dx = int(aug.dy[i]) + 3, int(aug.dx[i]) + 3
        ref = padded[order[i], :, dy:dy + 9, dx:dx + 7]
        ref = ref.flip(-1) if aug.flips[i] else ref
        assert torch.equal(out[j], ref.to(torch.uint8))
    assert 0 < aug.flips.float().mean() < 1 and aug.dy.abs().max() <= 3


def test_augment_off_is_a_plain_gather():
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    aug = Augment(images, pad=0, flip=False, seed=0)
    order = aug.new_epoch(10)
    assert torch.equal(aug(order, slice(0, 5)), images[order[:5]])


def test_lr_schedules():
    cos = LRSchedule(1.0, "cosine", warmup=10, total=110)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.5) and cos(109) < 0.01
    one = LRSchedule(1.0, "onecycle", warmup=10, total=110)
    assert one(60) == pytest.approx(0.5) and one(109) == pytest.approx(0.01)
    assert LRSchedule(0.3, "constant", warmup=0, total=5)(4) == 0.3


def test_restarts_make_each_cycle_a_complete_schedule():
    """train.restart_epochs: the first cycle is step for step the schedule of the short run, the next cycle warms
    up again and decays to zero at the end; a restart at or past the end changes nothing."""
    short, long = LRSchedule(1.0, "cosine", 10, 30), LRSchedule(1.0, "cosine", 10, 120, restarts=[30])
    assert [long(i) for i in range(30)] == [short(i) for i in range(30)]
    second = LRSchedule(1.0, "cosine", 10, 90)
    assert [long(30 + i) for i in range(90)] == [second(i) for i in range(90)] and long(119) < 0.001
    plain = LRSchedule(1.0, "cosine", 10, 120)
    assert [LRSchedule(1.0, "cosine", 10, 120, restarts=[120, 500])(i) for i in range(120)] == \
        [plain(i) for i in range(120)]


def test_a_rung_at_a_restart_reads_what_the_short_run_reaches(digits):
    """Trained with restart_epochs [2], the accuracy after epoch 2 of a 4-epoch run equals a complete 2-epoch
    run's (same seed), which is what makes the rung there rank like a complete short schedule."""
    config = replace(FAST, restart_epochs=[2])
    short = train(small_cnn(), replace(config, epochs=2), data=digits)
    long = train(small_cnn(), replace(config, epochs=4), data=digits)
    assert long.ok and long.history[1]["val_accuracy"] == short.val_accuracy and len(long.history) == 4
    # with a weight average for rungs, the rung at a restart still reads the decayed weights themselves
    averaged = train(small_cnn(), replace(config, epochs=4, rung_ema_epochs=0.5), data=digits)
    assert [("rung_accuracy" in h) for h in averaged.history] == [True, False, True, False]


def test_weight_decay_skips_norm_parameters_and_biases():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.01))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and {p.dim() for p in decayed["params"]} == {2, 4}
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 4  # conv bias, BN weight and bias, linear bias
    assert isinstance(make_optimizer(model, TrainConfig(optimizer="adamw")), torch.optim.AdamW)


def test_train_result_json_has_no_model_and_no_nan():
    result = TrainResult(status="diverged", history=[{"val_loss": float("nan")}], model=nn.Linear(1, 1))
    data = result.to_json()
    assert "model" not in data and data["history"][0]["val_loss"] is None
    json.dumps(data, allow_nan=False)


def test_progress_rewrites_on_a_terminal_and_prints_lines_elsewhere():
    pipe = io.StringIO()
    p = Progress(pipe, tty=False)
    p.status("step 1")
    p.line("epoch 1/2")
    assert pipe.getvalue() == "epoch 1/2\n"
    term = io.StringIO()
    t = Progress(term, tty=True, min_interval=0)
    t.status("step 10/20")
    t.status("step 2")
    t.line("done")
    assert term.getvalue().startswith("\rstep 10/20\rstep 2    ") and term.getvalue().endswith("\rdone\n")
    assert bar(1, 4, width=8) == "[##------]" and duration(125) == "2m05s" and count(12345) == "12.3k"


# ----------------------------------------------------------------------------------------------------------------
# search train
# ----------------------------------------------------------------------------------------------------------------


def test_search_train_saves_weights_metrics_and_the_architecture(tmp_path, cli):
    arch = tmp_path / "tiny.yaml"
    arch.write_text(TINY_ARCH)
    out = tmp_path / "run"
    res = cli("train", arch, "--epochs", "2", "--lr", "0.05", "--out", out)
    assert res.code == 0, res.err
    assert "epoch 1/2" in res.err and "epoch 2/2" in res.err and "test acc" in res.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs"] == 2 and metrics["config"]["lr"] == 0.05
    assert metrics["test_accuracy"] is not None
    state = torch.load(out / "weights.pt", weights_only=True)
    from search_space.compiler import build_model
    from search_space.spec import load_spec

    saved = load_spec(str(out / "arch.yaml"))
    given = load_spec(str(arch)).model
    assert saved.train.epochs == 2 and saved.model == replace(given, in_channels=1, num_classes=10)
    model = build_model(saved.model)  # the file carries the data's shape (digits: 1 channel, 10 classes)
    model.load_state_dict(state)


def test_search_train_refuses_a_search_space(tmp_path, cli):
    space = tmp_path / "space.yaml"
    space.write_text(TINY_ARCH.replace("width: 16, stride: 1", "width: {choice: [16, 32]}, stride: 1"))
    res = cli("train", space)
    assert res.code == 2 and "search sample" in res.err


def test_search_train_checks_flags_like_yaml_values(tmp_path, cli):
    arch = tmp_path / "tiny.yaml"
    arch.write_text(TINY_ARCH)
    res = cli("train", arch, "--epochs", "0")
    assert res.code == 2 and "--epochs" in res.err
    res = cli("train", arch, "--dataset", "cifar10", "--data-dir", tmp_path / "none")
    assert res.code == 2 and "train.data_dir" in res.err


def test_search_train_exits_1_when_training_fails(tmp_path, cli):
    arch = tmp_path / "tiny.yaml"
    arch.write_text(TINY_ARCH)
    res = cli("train", arch, "--lr", "1e6", "--epochs", "2", "--out", tmp_path / "run")
    assert res.code == 1 and "diverged" in res.err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "run" / "weights.pt").exists()


def test_rung_ema_scores_the_averaged_weights_before_the_last_epoch_and_leaves_training_unchanged(digits):
    """train.rung_ema_epochs adds rung_accuracy (an EMA of the weights, scored on validation) to every epoch but
    the last; the trained weights, and so every val_accuracy, are exactly those of a run without it."""
    config = replace(FAST, epochs=3)
    plain = train(small_cnn(), config, data=digits)
    averaged = train(small_cnn(), replace(config, rung_ema_epochs=0.5), data=digits)
    assert [h["val_accuracy"] for h in averaged.history] == [h["val_accuracy"] for h in plain.history]
    assert all("rung_accuracy" not in h for h in plain.history)
    rungs = [h.get("rung_accuracy") for h in averaged.history]
    assert all(0.0 <= r <= 1.0 for r in rungs[:2]) and rungs[2] is None
    assert rungs[:2] != [h["val_accuracy"] for h in averaged.history[:2]]  # another model was scored


def test_cuda_step_switches_are_off_by_default_and_fused_is_cuda_only():
    """train.fused_optimizer and train.compile_mode (issue 25, item 4) stay off until benchmarks/cuda_step.py
    measures them on a GPU; asking for a fused optimizer on the CPU gets the plain one."""
    assert TrainConfig().fused_optimizer is False and TrainConfig().compile_mode == "default"
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    for name in ("sgd", "adamw"):
        assert not make_optimizer(model, TrainConfig(optimizer=name, fused_optimizer=True)).defaults.get("fused")
