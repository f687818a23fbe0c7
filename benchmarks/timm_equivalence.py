"""Are the compiled zoo models the same functions as timm's, not just the same sizes?

For every zoo spec (``spaces/zoo/<name>.yaml``) whose name is a timm model, this builds timm's model
(``timm.create_model(name, pretrained=False)``) and ours (``build_model``), then:

1. randomises timm's BatchNorm affine parameters and running statistics (and every bias), so that a zero-initialised
   last BN gamma or an all-zero bias cannot hide a branch that the two implementations compute differently;
2. copies timm's state dict into ours in registration order: the i-th tensor of timm's ``state_dict()`` goes to the
   i-th of ours, and the two must have the same shape pairwise (names differ; order and shapes must not);
3. compares the logits of both models in eval mode on the same random input.

It prints one row per model with the max absolute difference of the logits and exits 1 on any mismatch. The
tolerance is 0: the logits must be bitwise identical. (The issue allowed 1e-5 where a softmax over a radix above 2
might round differently; split attention now takes that softmax on the same strided view as timm's RadixSoftmax,
and resnest50d_4s2x40d, R=4, is bitwise identical too, so any difference is a real one.) Exit 2 for an unknown
model name; a model without a timm twin (``resnet18_small``) is listed as skipped. Setup (a venv with timm) and sample
output: docs/benchmarks/scripts.md.

    python benchmarks/timm_equivalence.py                       # every zoo spec with a timm twin
    python benchmarks/timm_equivalence.py --models skresnet18 resnest50d_4s2x40d --size 160
    python benchmarks/timm_equivalence.py --json docs/results/timm-equivalence-DATE.json   # and the raw record
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "spaces" / "zoo"
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from search_space import build_model, load_spec  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from provenance import new_record, write_record  # noqa: E402

def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO.glob("*.yaml"))


def randomise_(model: nn.Module, seed: int) -> None:
    """BN gamma, beta, running mean and variance, and every bias, drawn at random (seeded).

    Gammas stay in [0.5, 1], betas and means small, variances in [0.5, 1.5], so deep networks keep activations of
    order one and the logits stay comparable at float32 resolution.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def copy_in_order(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state dict into ``dst`` pairing tensors by registration order; raise on any shape mismatch."""
    a, b = list(src.state_dict().items()), list(dst.state_dict().items())
    if len(a) != len(b):
        raise ValueError(f"{len(a)} tensors in timm's state dict, {len(b)} in ours")
    for (ka, va), (kb, vb) in zip(a, b):
        if va.shape != vb.shape:
            raise ValueError(f"timm {ka} {tuple(va.shape)} pairs with ours {kb} {tuple(vb.shape)}")
    dst.load_state_dict({kb: va for (_, va), (kb, _) in zip(a, b)}, strict=True)


def compare(name: str, create, size: int, batch: int, seed: int) -> dict:
    arch = load_spec(ZOO / f"{name}.yaml").model
    torch.manual_seed(seed)
    ref = create(name).eval()
    ours = build_model(arch).eval()
    randomise_(ref, seed)
    copy_in_order(ref, ours)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want, got = ref(x), ours(x)
    if want.shape != got.shape:
        raise ValueError(f"timm gives logits {tuple(want.shape)}, ours {tuple(got.shape)}")
    return {"params": sum(p.numel() for p in ours.parameters()),
            "params_ref": sum(p.numel() for p in ref.parameters()),
            "diff": (want - got).abs().max().item(), "scale": want.abs().max().item()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="zoo spec names (default: every zoo spec)")
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--batch", type=int, default=2, help="images in the random input (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random BN statistics and input")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: fastest on a small shared machine); 0 keeps torch's default")
    p.add_argument("--json", help="write the raw record (every model's figures, versions, machine, commit) here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for arg in (args.models or zoo_names()) for n in arg.split(",") if n]
    unknown = sorted(set(names) - set(zoo_names()))
    if unknown:
        print(f"error: --models: unknown zoo spec {', '.join(unknown)}; allowed: {', '.join(zoo_names())}",
              file=sys.stderr)
        return 2
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - a broken install counts as missing
        print(f"error: timm does not import ({e}); run this in the benchmark venv, see docs/benchmarks/scripts.md",
              file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    twins = set(timm.list_models())
    record = new_record(__file__, argv, timm=timm.__version__, size=args.size, batch=args.batch, seed=args.seed,
                        tolerance=0.0, models=[])
    print(f"torch {torch.__version__}, timm {timm.__version__}, input {args.batch}x3x{args.size}x{args.size}, "
          f"seed {args.seed}, eval mode, BN statistics and biases randomised")
    print(f"{'model':<22}{'params':>13}  {'max |logit|':>11}  {'max abs diff':>12}  result")
    print("-" * 73)
    failed = 0
    for name in names:
        if name not in twins:
            print(f"{name:<22}{'-':>13}  {'-':>11}  {'-':>12}  skipped: no timm model of this name")
            record["models"].append({"model": name, "result": "skipped: no timm model of this name"})
            continue
        try:
            r = compare(name, lambda n: timm.create_model(n, pretrained=False), args.size, args.batch, args.seed)
        except Exception as e:  # noqa: BLE001 - report the model and go on with the others
            failed += 1
            print(f"{name:<22}{'-':>13}  {'-':>11}  {'-':>12}  FAILED: {type(e).__name__}: {e}")
            record["models"].append({"model": name, "result": f"FAILED: {type(e).__name__}: {e}"})
            continue
        ok = r["diff"] == 0 and r["params"] == r["params_ref"]
        failed += not ok
        result = "identical" if ok else "MISMATCH"
        if r["params"] != r["params_ref"]:
            result += f" (params: timm {r['params_ref']:,})"
        print(f"{name:<22}{r['params']:>13,}  {r['scale']:>11.3g}  {r['diff']:>12.3g}  {result}")
        record["models"].append({"model": name, "params": r["params"], "params_timm": r["params_ref"],
                                 "max_abs_logit": r["scale"], "max_abs_diff": r["diff"], "result": result})
    print(f"{len(names)} models, {failed} mismatched or failed")
    record["failed"] = failed
    if args.json:
        write_record(args.json, record)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
