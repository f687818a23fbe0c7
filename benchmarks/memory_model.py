"""How close the training-memory model is to what autograd really saves: worst and median relative error.

For every zoo model (at ``--zoo-size``, 32x32 by default: the count per op is the same at every size, and 224x224
would only make the run slower) and ``--samples`` random architectures from every shipped space (at the space's
input size), fp32 and under bf16 autocast, it compares ``search_space.memory.saved_tensors(...).saved_bytes``
with ``measured_saved_bytes``: the distinct storages ``torch.autograd.graph.saved_tensors_hooks`` sees in a real
training-mode forward pass on the CPU, parameters and buffers left out. Relative error = (model - measured) /
measured. It prints one line per set and writes the raw JSON (every architecture's two numbers) to ``--out``.

    python benchmarks/memory_model.py --out docs/results/memory_model.json           # zoo + 200 per space
    python benchmarks/memory_model.py --samples 20                                   # quicker

Exit status 0 when every error is within --tolerance (default 0.05, the issue's goal), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from provenance import head_commit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from search_space.cli import sample_feasible  # noqa: E402
from search_space.compiler import build_model  # noqa: E402
from search_space.cost import resolve_io  # noqa: E402
from search_space.memory import measured_saved_bytes, saved_tensors  # noqa: E402
from search_space.spec import load_spec  # noqa: E402


def measure(arch, size: int, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(arch)
    ci, _ = resolve_io(arch, None, None)
    x = torch.randn(batch, ci, size, size)
    row = {"size": size}
    for amp, key in ((False, "fp32"), (True, "bf16")):
        predicted = saved_tensors(arch, batch, size, amp=amp).saved_bytes
        measured = measured_saved_bytes(model, x, amp)
        row[key] = {"model": predicted, "measured": measured, "rel_error": (predicted - measured) / measured}
    return row


def summary(rows: list[dict], key: str) -> dict:
    errors = [abs(r[key]["rel_error"]) for r in rows]
    return {"n": len(errors), "worst_abs_rel_error": max(errors), "median_abs_rel_error": statistics.median(errors),
            "exact": sum(e == 0 for e in errors)}


COMMIT = ""


def main() -> int:
    global COMMIT
    COMMIT = head_commit()  # the code measured: read at the start, not when the run ends
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200, help="architectures per shipped space")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--zoo-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--out", help="write the raw JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    sets: dict[str, list[dict]] = {"zoo": []}
    for path in sorted((ROOT / "spaces" / "zoo").glob("*.yaml")):
        sets["zoo"].append({"name": path.stem, **measure(load_spec(path).model, args.zoo_size, args.batch, 0)})
    for path in sorted((ROOT / "spaces").glob("*.yaml")):
        space = load_spec(path)
        rows = sets[f"spaces/{path.name}"] = []
        for seed in range(args.samples):
            arch = sample_feasible(space, seed).model
            rows.append({"seed": seed, **measure(arch, arch.input_size, args.batch, seed)})
            if (seed + 1) % 50 == 0:
                print(f"  {path.name}: {seed + 1}/{args.samples}", file=sys.stderr, flush=True)
    result = {"benchmark": "memory_model", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "commit": COMMIT,
              "machine": f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} thread(s), "
                         f"torch {torch.__version__}, no GPU (CPU forward)",
              "command": "python " + " ".join(sys.argv), "batch": args.batch, "seconds": round(time.time() - t0, 1),
              "summary": {name: {k: summary(rows, k) for k in ("fp32", "bf16")} for name, rows in sets.items()},
              "rows": sets}
    every = [r for rows in sets.values() for r in rows]
    result["summary"]["all"] = {k: summary(every, k) for k in ("fp32", "bf16")}
    for name, s in result["summary"].items():
        print(f"{name:24s} " + "  ".join(f"{k}: n {v['n']}, worst {v['worst_abs_rel_error']:.4%}, median "
                                          f"{v['median_abs_rel_error']:.4%}, exact {v['exact']}"
                                          for k, v in s.items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    worst = max(v["worst_abs_rel_error"] for v in result["summary"]["all"].values())
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
