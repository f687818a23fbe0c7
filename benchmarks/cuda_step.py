"""A proxy trial's training step on the GPU, close to the hardware: where does the time go, and what pays?

Small proxy models are launch-bound on a big GPU: the host spends longer issuing a step's few hundred kernels
than the GPU spends running them. This script takes architectures of the headline space (``--space``, samples
``--seeds``), the space's recipe (batch size, bf16 autocast, channels_last, Nesterov SGD, label smoothing) on data of
the space's shape resident on the device, and measures milliseconds per training step for:

* ``plain``: a plain PyTorch loop (forward, loss, backward, step) - the reference;
* ``ours``: the project's trainer (``runners.training.loop.train``, read from its images_per_s);
* ``fused``: plain with the fused optimizer (``train.fused_optimizer``);
* ``compile``: plain under ``torch.compile`` (``train.compile``);
* ``graphs``: plain under ``torch.compile(mode="reduce-overhead")``: CUDA graphs (``train.compile_mode``);
* ``batch xK``: plain at K times the batch (what a larger batch per step buys per image; the recipe decides
  whether the accuracy allows it).

It also profiles ``plain`` (``torch.profiler``): host time per step against device time per step; host > device
means launch-bound, the case CUDA graphs address. Everything here is OFF by default in the trainer until these
numbers say it pays (docs/gpus.md). Needs a GPU for the figures that matter; ``--device cpu`` only checks the
script runs.

    python benchmarks/cuda_step.py --out docs/results/cuda_step_h100.json
    python benchmarks/cuda_step.py --device cpu --steps 5 --variants plain,ours,fused      # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

from provenance import head_commit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from search_space.cli import sample_feasible  # noqa: E402
from search_space.compiler import build_model  # noqa: E402
from search_space.spec import load_spec  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step_ms(arch, data, config, device, steps: int, warmup: int, *, fused=False, compile_mode=None,
                  batch_mult=1, profile=False) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=data.channels, num_classes=data.num_classes)
    channels_last = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    kw = {"fused": True} if fused and device.type == "cuda" else {}
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True, **kw)
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    crit = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    batch = config.batch_size * batch_mult
    n = len(data.train_y)
    reps = -(-batch // n)
    x_all = data.train_x.to(device).repeat(reps, 1, 1, 1)[:max(batch, n)]
    y_all = data.train_y.to(device).repeat(reps)[:max(batch, n)]
    x = (x_all[:batch].float() / 255).contiguous(memory_format=fmt)
    y = y_all[:batch]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with amp:
            loss = crit(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    out = {"ms_per_step": round(1000 * statistics.median(times), 3), "batch": batch,
           "us_per_image": round(1e6 * statistics.median(times) / batch, 3)}
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with prof(activities=acts) as p:
            for _ in range(steps):
                step()
            sync(device)
        events = p.key_averages()
        host = sum(e.self_cpu_time_total for e in events) / steps / 1000
        dev = sum(getattr(e, "self_device_time_total", 0) for e in events) / steps / 1000
        out.update(host_ms_per_step=round(host, 3), device_ms_per_step=round(dev, 3),
                   launch_bound=bool(device.type == "cuda" and host > dev),
                   top_host_ops=[(e.key, round(e.self_cpu_time_total / steps / 1000, 3))
                                 for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]])
    return out


def ours_step_ms(spec, data, device, epochs: int) -> dict:
    from runners.training.loop import train

    config = dataclasses.replace(spec.train, epochs=epochs, device=device.type)
    result = train(spec.model, config, data=data, device=device, image_size=data.image_size)
    speed = result.history[-1]["images_per_s"] if result.history else None
    return {"status": result.status, "images_per_s": speed,
            "ms_per_step": round(1000 * config.batch_size / speed, 3) if speed else None,
            "peak_memory_mb": result.history[-1].get("peak_memory_mb") if result.history else None}


COMMIT = ""


def main() -> int:
    global COMMIT
    COMMIT = head_commit()  # the code measured: read at the start, not when the run ends
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="spaces/resnest.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--variants", default="plain,ours,fused,compile,graphs,batch2,batch4")
    p.add_argument("--out")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu for a smoke run (the figures need a GPU)")
    from runners.training.data import load_dataset

    space = load_spec(args.space)
    variants = args.variants.split(",")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        spec = sample_feasible(space, seed)
        size = spec.train.image_size or spec.model.input_size
        data = load_dataset(spec.train, size)
        row = {"seed": seed, "params": sum(p.numel() for p in build_model(
            spec.model, in_channels=data.channels, num_classes=data.num_classes).parameters())}
        run = dict(steps=args.steps, warmup=args.warmup)
        for v in variants:
            try:
                if v == "plain":
                    row[v] = plain_step_ms(spec.model, data, spec.train, device, profile=True, **run)
                elif v == "ours":
                    row[v] = ours_step_ms(spec, data, device, epochs=1)
                elif v == "fused":
                    row[v] = plain_step_ms(spec.model, data, spec.train, device, fused=True, **run)
                elif v == "compile":
                    row[v] = plain_step_ms(spec.model, data, spec.train, device, compile_mode="default", **run)
                elif v == "graphs":
                    row[v] = plain_step_ms(spec.model, data, spec.train, device, compile_mode="reduce-overhead",
                                           **run)
                elif v.startswith("batch"):
                    row[v] = plain_step_ms(spec.model, data, spec.train, device, batch_mult=int(v[5:]), **run)
            except Exception as e:  # noqa: BLE001 - one variant failing (a compile error) is a result too
                row[v] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        rows.append(row)
        base = row.get("plain", {}).get("ms_per_step")
        print(f"seed {seed} ({row['params']:,} params): " + ", ".join(
            f"{v} {row[v].get('ms_per_step')} ms" + (f" ({base / row[v]['ms_per_step']:.2f}x)"
                                                      if base and row[v].get("ms_per_step") and v != "plain" else "")
            for v in variants if v in row) + (f"; host {row['plain']['host_ms_per_step']} ms vs device "
                                              f"{row['plain']['device_ms_per_step']} ms per step"
                                              if "host_ms_per_step" in row.get("plain", {}) else ""), flush=True)
    if args.out:
        result = {"benchmark": "cuda_step", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "commit": COMMIT,
                  "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)",
                  "torch": torch.__version__, "command": "python " + " ".join(sys.argv), "rows": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
