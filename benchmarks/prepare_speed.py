"""Prepared datasets, measured: prepare speed over cores, JPEG draft mode, cold against warm start of `search run`,
resident memory of two workers sharing the map, and training images/s from the map against in-memory tensors.

    python benchmarks/make_image_folder.py /tmp/photos          # 50,000 JPEGs, 100 classes, 256-500 px
    nice python benchmarks/prepare_speed.py /tmp/photos --json docs/results/data-prepare-<date>.json

Prints each figure as a ratio with the raw times, and writes every raw number to ``--json``. Sections (all by
default; pick with ``--only``):

* ``prepare``: ``search data prepare`` at ``--size`` with 1 process and with all cores (``--jobs``): seconds,
  images/s and the speed-up (the goal: close to linear in cores);
* ``draft``: decoding ``--draft-images`` JPEGs in one process with PIL's draft mode against full-scale decoding;
* ``start``: seconds from starting ``search run SPACE --dataset imagefolder --data-dir SRC`` to the end of the
  first trial's first epoch, with an empty cache (cold: the folder is prepared) and again (warm: the cache is
  mapped); a one-epoch run of a small space on as many rows as 2% of a 50,000-image folder's training rows,
  validated on 1% (the fractions shrink as the folder grows, to at least 0.01), so the epoch itself is
  short and the same in both. Then, from the warm cache, the second of two workers (``--workers 2``) and the
  audit (``search fidelity``) to the end of their first training run, and the floor: the same run on the
  embedded ``digits_pairs`` (as many rows), which has no folder to list, fingerprint or map;
* ``load``: the part of that start the cache changes, in-process: ``load_dataset`` of the raw folder with an empty
  cache against a filled one, and the seconds a fresh process spends importing torch and the search stack;
* ``memory``: two processes that load the prepared dataset as two search workers do and read every image; the
  proportional set size (PSS, shared pages split between the processes that map them) of the two together,
  against two processes holding private copies (what ``imagefolder`` did before);
* ``train``: training images/s of one small architecture on the CPU with the training split read from the map
  against the same split copied into memory (alternating runs, median).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import new_record, write_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = """\
name: bench-start
model:
  input_size: 32
  stem: {type: cifar, width: 16}
  stages:
    - depth: 1
      width: {choice: [16, 24]}
      block: {type: plain, bottleneck: false}
train: {dataset: imagefolder, epochs: 1, batch_size: 64, warmup_epochs: 0, train_fraction: TRAIN, val_fraction: VAL}
search: {trials: 1, sampler: random, pruner: none}
"""

ARCH = """\
name: bench-train
model:
  input_size: 32
  stem: {type: cifar, width: 16}
  stages:
    - {depth: 1, width: 16, stride: 1, block: {type: plain, bottleneck: false}}
    - {depth: 1, width: 32, stride: 2, block: {type: plain, bottleneck: false}}
train: {epochs: 1, batch_size: 128, lr: 0.05, warmup_epochs: 0}
"""


def env_with(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "search_space.cli", *map(str, args)]


# ----------------------------------------------------------------------------------------------------------------


def bench_prepare(src: Path, work: Path, size: int, jobs: int) -> dict:
    """In this process, as ``search data prepare`` runs it (the command's own start-up, mostly importing torch,
    is left out: it is the same whatever the number of processes)."""
    from runners.training.data import prepare_source
    from runners.training.prepare import DecodeOptions
    from runners.training.sources import list_imagefolder

    t0 = time.perf_counter()
    listing = list_imagefolder(src)
    out = {"listing_seconds": round(time.perf_counter() - t0, 2), "source_images": len(listing)}
    for j in (1, jobs):
        target = work / f"prepared-j{j}"
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        meta = prepare_source(listing, target, size, 0.15, 0.2, 0, options=DecodeOptions(size=size), jobs=j)
        seconds = time.perf_counter() - t0
        images = meta["count"]
        out[f"jobs_{j}"] = {"seconds": round(seconds, 2), "images": images, "images_per_s": round(images / seconds, 1)}
        print(f"prepare, {j} process(es): {images:,} images in {seconds:.1f}s, {images / seconds:,.0f} images/s",
              flush=True)
        if j != jobs:
            shutil.rmtree(target)
    out["speedup"] = round(out["jobs_1"]["seconds"] / out[f"jobs_{jobs}"]["seconds"], 3)
    out["jobs"] = jobs
    print(f"prepare speed-up with {jobs} processes against 1: {out['speedup']:.2f}x (linear: {jobs}x); listing "
          f"{len(listing):,} files took {out['listing_seconds']:.2f}s", flush=True)
    return out


def bench_draft(src: Path, size: int, images: int) -> dict:
    from runners.training.prepare import DecodeOptions, decode
    from runners.training.sources import list_imagefolder

    listing = list_imagefolder(src)
    step = max(1, len(listing.files) // images)
    files = [str(listing.root / f) for f in listing.files[::step][:images]]
    out = {"images": len(files), "size": size}
    for draft in (False, True):
        opt = DecodeOptions(size=size, draft=draft)
        t0 = time.perf_counter()
        for f in files:
            decode(f, opt)
        seconds = time.perf_counter() - t0
        out["draft" if draft else "full"] = {"seconds": round(seconds, 2), "images_per_s": round(len(files) / seconds, 1)}
    out["speedup"] = round(out["full"]["seconds"] / out["draft"]["seconds"], 3)
    import numpy as np

    diff = [np.abs(decode(f, DecodeOptions(size, draft=True)).astype(int)
                   - decode(f, DecodeOptions(size, draft=False)).astype(int)).mean() for f in files[:200]]
    out["mean_abs_pixel_difference"] = round(float(np.mean(diff)), 3)
    print(f"JPEG draft mode at {size}px: {out['speedup']:.2f}x the decode rate of full-scale decoding "
          f"({out['draft']['images_per_s']:,.0f} against {out['full']['images_per_s']:,.0f} images/s, one process); "
          f"mean pixel difference {out['mean_abs_pixel_difference']:.2f} of 255", flush=True)
    return out


def seconds_until(command: list, cache: Path, done, count: int = 1) -> float:
    """Seconds from starting ``command`` until ``count`` lines of its stderr satisfy ``done`` (each such line ends
    a training run: its first epoch is over); the command must then finish with exit code 0."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, env=env_with(SEARCH_DATA_CACHE=str(cache)), stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    seen, seconds = 0, None
    for line in proc.stderr:
        if seconds is None and done(line):
            seen += 1
            if seen == count:
                seconds = time.perf_counter() - t0
    proc.wait()
    if proc.returncode != 0 or seconds is None:
        raise SystemExit(f"{' '.join(map(str, command[2:]))} failed ({proc.returncode})")
    return seconds


def trial_line(line: str) -> bool:
    return "trial" in line and "complete" in line  # a one-epoch trial's line: its first epoch has ended


def audit_line(line: str) -> bool:
    return " model " in line and ", val " in line  # an audit run's line: its first epoch has ended


START_IMAGES = 50_000  # the start run trains as many rows as 2% of a folder this size, and validates 1%


def start_space(images: int) -> str:
    """The start run's space for a folder of ``images`` images: its fractions shrink as the folder grows so that
    the one epoch trains and validates as many rows as 2% and 1% of a 50,000-image folder's, down to the spec's
    least fraction (0.01): from 100,000 images on, the epoch grows with the folder (1% of its rows each), which
    counts against the warm start, never for it."""
    scale = START_IMAGES / images
    return (SPACE.replace("TRAIN", f"{max(0.01, 0.02 * scale):.6g}")
            .replace("VAL", f"{max(0.01, 0.01 * scale):.6g}"))


def count_images(src: Path) -> int:
    """The images the loader would read from ``src`` (its own listing: the same suffixes and skipped entries)."""
    from runners.training.sources import list_imagefolder

    return len(list_imagefolder(src).files)


def run_command(src: Path, work: Path, name: str, size: int, *extra) -> list:
    space = work / "space.yaml"
    run = work / f"run-{name}"
    shutil.rmtree(run, ignore_errors=True)
    return cli("run", space, "--dataset", "imagefolder", "--data-dir", src, "--image-size", size, "--device", "cpu",
               "--out", run, "--threads", 1, *extra)


def audit_command(src: Path, work: Path, name: str, size: int) -> list:
    space = work / "space.yaml"
    run = work / f"audit-{name}"
    shutil.rmtree(run, ignore_errors=True)
    return cli("fidelity", space, "--dataset", "imagefolder", "--data-dir", src, "--image-size", size, "--device",
               "cpu", "--out", run, "--threads", 1, "--n", 3, "--factor", 2, "--seeds", 1, "--epochs", 1)


def bench_start(src: Path, work: Path, size: int, repeats: int = 3) -> dict:
    """Cold against warm ``search run``, then what else starts from the warm cache: the second of two workers
    (``--workers 2``: both first trials over) and the audit (its first run over). Last, the floor every start
    pays whatever its data: the same run on the embedded ``digits_pairs`` with as many rows (nothing to list,
    fingerprint or map)."""
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    median = statistics.median
    images = count_images(src)
    (work / "space.yaml").write_text(start_space(images))
    cold = seconds_until(run_command(src, work, "cold", size), cache, trial_line)
    warm = [seconds_until(run_command(src, work, f"warm{i}", size), cache, trial_line) for i in range(repeats)]
    workers = [seconds_until(run_command(src, work, f"workers{i}", size, "--workers", 2, "--trials", 2, "--storage",
                                         f"journal:{work}/run-workers{i}.journal"), cache, trial_line, count=2)
               for i in range(repeats)]
    audit = [seconds_until(audit_command(src, work, f"{i}", size), cache, audit_line) for i in range(repeats)]
    floor_space = work / "space-floor.yaml"  # as many training and validation rows as 50,000 photos' 2% and 1%
    floor_space.write_text(SPACE.replace("dataset: imagefolder", "dataset: digits_pairs")
                           .replace("TRAIN", "0.24").replace("VAL", "0.15"))
    floor = []
    for i in range(repeats):
        shutil.rmtree(work / f"run-floor{i}", ignore_errors=True)
        floor.append(seconds_until(cli("run", floor_space, "--device", "cpu", "--out", work / f"run-floor{i}",
                                       "--threads", 1), cache, trial_line))
    out = {"images": images, "space": start_space(images), "cold_seconds": round(cold, 2),
           "warm_seconds": [round(w, 2) for w in warm],
           "warm_median_seconds": round(median(warm), 2),
           "second_worker_seconds": [round(w, 2) for w in workers],
           "second_worker_median_seconds": round(median(workers), 2),
           "audit_first_run_seconds": [round(w, 2) for w in audit],
           "audit_first_run_median_seconds": round(median(audit), 2),
           "floor_seconds": [round(w, 2) for w in floor], "floor_median_seconds": round(median(floor), 2)}
    out["warm_over_cold"] = round(out["warm_median_seconds"] / cold, 4)
    out["warm_minus_floor_seconds"] = round(out["warm_median_seconds"] - out["floor_median_seconds"], 2)
    print(f"search run to the end of the first epoch: cold {cold:.1f}s, warm {out['warm_median_seconds']:.1f}s "
          f"(median of {repeats}) = {out['warm_over_cold']:.1%} of cold; the same run on the embedded digits_pairs (no "
          f"folder to list or map) {out['floor_median_seconds']:.1f}s; from the warm cache, the second of two "
          f"workers {out['second_worker_median_seconds']:.1f}s, the audit's first run "
          f"{out['audit_first_run_median_seconds']:.1f}s", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def bench_load(src: Path, work: Path, size: int, repeats: int) -> dict:
    """The part of a start that the cache changes, in this process: ``load_dataset`` of the raw folder with an
    empty cache (it prepares, with all cores) against a filled one (it lists the folder for the fingerprint and
    maps the array); and what importing the training stack costs a fresh process, which every start pays."""
    from runners.training.data import clear_cache, load_dataset
    from search_space.config import TrainConfig

    cache = work / "cache-load"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["SEARCH_DATA_CACHE"] = str(cache)
    config = TrainConfig(dataset="imagefolder", data_dir=str(src))
    clear_cache()
    t0 = time.perf_counter()
    load_dataset(config, size)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        clear_cache()
        t0 = time.perf_counter()
        load_dataset(config, size)
        warm.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, optuna, runners.training.data, runners.search.optuna_engine"],
                   env=env_with(), check=True)
    imports = time.perf_counter() - t0
    out = {"cold_seconds": round(cold, 2), "warm_seconds": [round(w, 3) for w in warm],
           "warm_median_seconds": round(statistics.median(warm), 3), "import_seconds": round(imports, 2)}
    out["warm_over_cold"] = round(out["warm_median_seconds"] / cold, 5)
    print(f"loading the raw folder: cold (prepare) {cold:.1f}s, warm (list and map) "
          f"{out['warm_median_seconds']:.2f}s = {out['warm_over_cold']:.2%} of cold; a fresh process spends "
          f"{imports:.1f}s importing torch and the search stack before either", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return out


MEMORY_CHILD = """
import sys, numpy as np, torch
from runners.training.data import load_dataset
from search_space.config import TrainConfig
mode = sys.argv[2]
if mode == 'map':  # as a search worker loads a prepared dataset
    d = load_dataset(TrainConfig(dataset='prepared', data_dir=sys.argv[1]))
    parts = (d.train_x, d.val_x, d.test_x)
elif mode == 'copy':  # a private copy per process, as imagefolder held its images before
    parts = (torch.from_numpy(np.load(sys.argv[1] + '/images.npy')),)
else:  # the same imports, no data: the baseline
    parts = ()
total = sum(int(x.sum()) for x in parts)  # every image read
print('ready', flush=True)
sys.stdin.readline()
"""


def smaps(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0]) * 1024
    return fields


def bench_memory(prepared: Path) -> dict:
    import numpy as np

    nbytes = int(np.load(prepared / "images.npy", mmap_mode="r").nbytes)
    out = {"data_bytes": nbytes}
    for mode in ("none", "map", "copy"):
        procs = [subprocess.Popen([sys.executable, "-c", MEMORY_CHILD, str(prepared), mode], env=env_with(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        rows = [smaps(p.pid) for p in procs]
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
            p.wait()
        out[mode] = {"pss_bytes_total": sum(r["Pss"] for r in rows), "rss_bytes": [r["Rss"] for r in rows],
                     "private_bytes_total": sum(r["Private_Clean"] + r["Private_Dirty"] for r in rows)}
    baseline = out["none"]["pss_bytes_total"]  # two processes with the same imports and no data
    out["copies_map"] = round((out["map"]["pss_bytes_total"] - baseline) / nbytes, 3)
    out["copies_copy"] = round((out["copy"]["pss_bytes_total"] - baseline) / nbytes, 3)
    print(f"two workers, {nbytes / 2**20:,.0f} MiB of images: beyond two processes holding no data, they hold "
          f"{out['copies_map']:.2f} copies of the data mapping the prepared array (PSS, shared pages split between "
          f"them) against {out['copies_copy']:.2f} with private copies", flush=True)
    return out


def bench_train(prepared: Path, rows: int, repeats: int) -> dict:
    import dataclasses

    import torch

    from runners.training.data import dataset_from
    from runners.training.loop import train
    from runners.training.prepared import open_prepared
    from search_space.spec import parse_spec
    import yaml

    torch.set_num_threads(1)
    spec = parse_spec(yaml.safe_load(ARCH))
    config = spec.train
    mapped = dataset_from(open_prepared(prepared), config)
    mapped = dataclasses.replace(mapped, train_x=mapped.train_x[:rows], train_y=mapped.train_y[:rows],
                                 val_x=mapped.val_x[:512], val_y=mapped.val_y[:512])
    memory = dataclasses.replace(mapped, train_x=mapped.train_x.clone(), val_x=mapped.val_x.clone())
    rates = {"map": [], "memory": []}
    for k in range(repeats):  # ABBA: neither source always runs first on a machine whose load drifts
        pairs = (("map", mapped), ("memory", memory))
        for name, data in (pairs if k % 2 == 0 else pairs[::-1]):
            result = train(spec.model, config, data=data, device="cpu")
            rates[name].append(result.history[0]["images_per_s"])
    out = {"rows": rows, "repeats": repeats, "map_images_per_s": [round(r, 1) for r in rates["map"]],
           "memory_images_per_s": [round(r, 1) for r in rates["memory"]]}
    out["ratio"] = round(statistics.median(rates["map"]) / statistics.median(rates["memory"]), 4)
    print(f"training images/s on the CPU from the map against in-memory tensors: {out['ratio']:.3f} "
          f"({statistics.median(rates['map']):,.0f} against {statistics.median(rates['memory']):,.0f}, median of "
          f"{repeats})", flush=True)
    out["gather"] = bench_gather(mapped.train_x, memory.train_x, config.batch_size)
    return out


def bench_gather(mapped, memory, batch: int, rounds: int = 15) -> dict:
    """What the map changes in training, alone: the augmenting gather of every batch of an epoch (random order,
    crop and flip), from the map against from memory, interleaved."""
    from runners.training.loop import Augment

    times = {"map": [], "memory": []}
    for k in range(rounds):
        for name, images in ((("map", mapped), ("memory", memory)) if k % 2 == 0 else
                             (("memory", memory), ("map", mapped))):
            augment = Augment(images, 4, True, seed=k)
            order = augment.new_epoch(len(images))
            t0 = time.perf_counter()
            for start in range(0, len(images) - batch + 1, batch):
                augment(order, slice(start, start + batch))
            times[name].append(len(images) / (time.perf_counter() - t0))
    out = {"rounds": rounds, "map_images_per_s": round(statistics.median(times["map"]), 1),
           "memory_images_per_s": round(statistics.median(times["memory"]), 1)}
    out["ratio"] = round(out["map_images_per_s"] / out["memory_images_per_s"], 4)
    print(f"the augmenting gather alone, from the map against from memory: {out['ratio']:.3f} "
          f"({out['map_images_per_s']:,.0f} against {out['memory_images_per_s']:,.0f} images/s, median of {rounds})",
          flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="image folder (benchmarks/make_image_folder.py makes one)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--draft-images", type=int, default=2000)
    p.add_argument("--train-rows", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", choices=("prepare", "draft", "start", "load", "memory", "train"))
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--json", help="write the raw record here")
    args = p.parse_args(argv)
    src = Path(args.src).resolve()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("prepare", "draft", "start", "load", "memory", "train"))
    record = new_record(__file__, argv, source=str(src), size=args.size)
    try:
        if "prepare" in only:
            record["prepare"] = bench_prepare(src, work, args.size, args.jobs)
        if "draft" in only:
            record["draft"] = bench_draft(src, args.size, args.draft_images)
        if "start" in only:
            record["start"] = bench_start(src, work, args.size, args.repeats)
        if "load" in only:
            record["load"] = bench_load(src, work, args.size, args.repeats)
        prepared = work / f"prepared-j{args.jobs}"
        if ({"memory", "train"} & only) and not (prepared / "meta.json").exists():
            subprocess.run(cli("data", "prepare", src, "-o", prepared, "--size", args.size), env=env_with(),
                           check=True, stderr=subprocess.DEVNULL)
        if "memory" in only:
            record["memory"] = bench_memory(prepared)
        if "train" in only:
            record["train"] = bench_train(prepared, args.train_rows, args.repeats)
    finally:
        if args.json:
            write_record(args.json, record)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
