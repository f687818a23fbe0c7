"""How long the worst inputs the spec loader accepts or refuses take: the limits must keep every case bounded.

Each case is loaded with ``load_spec`` (read, SpecLoader, validation, cost model) a few times; the script prints the
median CPU seconds of this process per load and what happened (valid, or the start of the error). Cases: a shipped
space, the largest spec within the limits (16 stages of 64 listed blocks), a file just under the size limit (one
long string), a file at the YAML node limit, thousands of stages, deep nesting and an alias bomb. Run from the
project root: ``python benchmarks/spec_limits.py`` (``--json FILE`` also writes the raw record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from provenance import ROOT, new_record, write_record

sys.path.insert(0, str(ROOT))

from search_space.schema import SpecError  # noqa: E402
from search_space.spec import MAX_SPEC_BYTES, MAX_STAGES, MAX_YAML_NODES, load_spec  # noqa: E402

HEAD = "name: t\nmodel:\n  input_size: 16\n  stem: {type: cifar, width: 16}\n  stages:\n"


def cases() -> dict[str, str]:
    blocks = ", ".join(["{type: grouped, cardinality: 2, bottleneck_ratio: 0.5, attention: se}"] * 64)
    largest = HEAD + "".join(f"    - {{width: 32, blocks: [{blocks}]}}\n" for _ in range(MAX_STAGES))
    spec = HEAD + "    - {depth: 1, width: 32}\n"
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    return {
        "shipped space (spaces/resnest.yaml)": (ROOT / "spaces" / "resnest.yaml").read_text(),
        f"largest valid spec ({MAX_STAGES} stages x 64 blocks)": largest,
        "1 MB file (one long comment)": spec + "#" * (MAX_SPEC_BYTES - len(spec) - 2) + "\n",
        f"{MAX_YAML_NODES:,} YAML nodes": spec + "x: [" + ", ".join(["1"] * MAX_YAML_NODES) + "]\n",
        "5,000 stages": HEAD + "    - {depth: 1, width: 32}\n" * 5000,
        "100,000 nested lists": "name: t\nmodel: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "alias bomb (9^9 leaves)": bomb,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the raw record here")
    args = p.parse_args(argv)
    record = new_record(__file__, argv, cases=[])
    print(f"{'case':<44} {'CPU s/load':>10}  outcome")
    for name, text in cases().items():
        times, outcome = [], ""
        for _ in range(args.repeats):
            start = time.process_time()
            try:
                spec = load_spec(text)
                outcome = f"valid ({len(spec.model.stages)} stages)"
            except SpecError as e:
                outcome = f"refused: {str(e)[:60]}"
            times.append(time.process_time() - start)
        print(f"{name:<44} {statistics.median(times):>10.3f}  {outcome}")
        record["cases"].append({"case": name, "cpu_seconds": [round(t, 4) for t in times],
                                "median_cpu_seconds": round(statistics.median(times), 4), "outcome": outcome})
    if args.json:
        write_record(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
