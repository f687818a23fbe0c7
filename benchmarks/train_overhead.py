"""How much does ``runners.training.loop.train`` cost over a minimal hand-written PyTorch loop?

Both train the same small ResNet (plain ``torch.nn``, so this does not depend on the compiler) on the same
uint8 synthetic 3x32x32 training rows, with the same batch size, optimiser (Nesterov SGD, weight decay), label
smoothing and input normalisation, and both score the validation split after every epoch, in one process.
Augmentation is off in both for the headline ratio; the cost of the loop's crop+flip is shown separately.
The first epoch of every run is warmup and is not timed, and the runs are interleaved over several rounds
(medians reported) so drifting machine load hits both alike.

Each epoch is timed in wall-clock seconds and in process CPU seconds. On a shared machine the CPU time is the
steadier measure (other processes stretch wall time, not the work done); with one thread it is exact.

    python benchmarks/train_overhead.py [--rounds 5] [--epochs 2] [--samples 2048] [--batch-size 128] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn as nn

from runners.training.data import load_dataset
from runners.training.loop import train
from search_space.config import TrainConfig


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def small_resnet(classes=10, width=32):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


class Clock:
    """Wall and process-CPU seconds of the timed epochs (the first epoch of a run is warmup)."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.epochs = 0
        self._mark = None

    def tick(self, epoch: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if epoch > 1:
            self.wall += now[0] - self._mark[0]
            self.cpu += now[1] - self._mark[1]
            self.epochs += 1
        self._mark = now


def plain_loop(data, config: TrainConfig, epochs: int) -> Clock:
    """The loop everyone writes: shuffle, slice, normalise, forward, loss, backward, step; then a no_grad pass
    over the validation split."""
    model = small_resnet(data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                          weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    n, bs = len(data.train_y), config.batch_size
    clock = Clock()
    clock.tick(0)
    for epoch in range(1, epochs + 2):
        model.train()
        perm = torch.randperm(n)
        for i in range(n // bs):
            idx = perm[i * bs:(i + 1) * bs]
            x = (data.train_x[idx].float() / 255 - mean) / std
            loss = loss_fn(model(x), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(data.val_y), 2 * bs):
                x = (data.val_x[i:i + 2 * bs].float() / 255 - mean) / std
                correct += int((model(x).argmax(1) == data.val_y[i:i + 2 * bs]).sum())
        clock.tick(epoch)
    return clock


def loop(data, config: TrainConfig, epochs: int) -> Clock:
    """``train()`` on the same data, timed between its per-epoch reports."""
    clock = Clock()
    clock.tick(0)
    result = train(small_resnet(data.num_classes), replace(config, epochs=epochs + 1), data=data,
                   report=lambda epoch, metrics: clock.tick(epoch))
    assert result.status == "ok", result.reason
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run (plus one warmup)")
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = TrainConfig(dataset="synthetic", synthetic_samples=args.samples, batch_size=args.batch_size,
                         lr=0.05, val_fraction=0.1, crop_padding=0, flip=False, warmup_epochs=0.5)
    data = load_dataset(config, image_size=32)
    images = (len(data.train_y) // args.batch_size) * args.batch_size  # per epoch; the last partial batch is dropped
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {data.summary()}; "
          f"batch {args.batch_size}; {args.epochs} timed epochs x {args.rounds} rounds")
    runs = {"plain": [], "train": [], "aug": []}
    for r in range(args.rounds):
        runs["plain"].append(plain_loop(data, config, args.epochs))
        runs["train"].append(loop(data, config, args.epochs))
        runs["aug"].append(loop(data, replace(config, crop_padding=None, flip=True), args.epochs))
        p, t, a = (runs[k][-1] for k in ("plain", "train", "aug"))
        print(f"round {r + 1}: cpu-time ratio {p.cpu / t.cpu:.3f} (crop+flip {p.cpu / a.cpu:.3f}), "
              f"wall ratio {p.wall / t.wall:.3f} (crop+flip {p.wall / a.wall:.3f})")

    def rate(clocks, attr):
        return statistics.median(images * c.epochs / getattr(c, attr) for c in clocks)

    print(f"{'':28}{'img/s (CPU time)':>18}{'ratio':>8}{'img/s (wall)':>16}{'ratio':>8}")
    base_cpu, base_wall = rate(runs["plain"], "cpu"), rate(runs["plain"], "wall")
    for key, label in (("plain", "plain loop"), ("train", "train()"), ("aug", "train() with crop+flip")):
        cpu, wall = rate(runs[key], "cpu"), rate(runs[key], "wall")
        print(f"{label:28}{cpu:18,.0f}{cpu / base_cpu:8.3f}{wall:16,.0f}{wall / base_wall:8.3f}")


if __name__ == "__main__":
    main()
