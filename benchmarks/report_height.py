"""How long the report page is: its height in pixels in headless Chromium at a laptop's width (1366 x 768), for
run directories of 20 trials (the shipped budget) and 44 (the design-space rule), written as an engine writes
them from sampled architectures of the tests' tiny space (no training: the accuracies are made up, which changes
no layout). Prints one JSON object; ``--old DIR`` also measures the report of another checkout (a worktree of an
older commit) on the same run directories, for a before/after.

    python benchmarks/report_height.py [--old /tmp/old-checkout] > docs/results/report-height-DATE.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURE = ("<script>window.addEventListener('load',()=>setTimeout(()=>document.documentElement.setAttribute("
           "'data-height',document.documentElement.scrollHeight),500))</script></body>")


def height(page: Path, profile: Path) -> int:
    copy = page.with_name("measured.html")
    copy.write_text(page.read_text().replace("</body>", MEASURE))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--window-size=1366,768", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=300).stdout
    return int(re.findall(r'data-height="(\d+)"', dom)[0])


def report(checkout: Path, run: Path) -> Path:
    """report.html of ``run`` written by the code of ``checkout`` (old layouts: runners.report, new: .page)."""
    code = ("import sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
            "try:\n    from runners.report.page import write_report\nexcept ImportError:\n"
            "    from runners.report import write_report\nwrite_report(Path(sys.argv[2]), n_boot=100)")
    subprocess.run([sys.executable, "-c", code, str(checkout), str(run)], check=True, capture_output=True)
    return run / "report.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="another checkout whose report to measure too")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from test_run_dir import fake_run

    out = {"what": "height of report.html in headless Chromium at 1366x768, in CSS pixels",
           "command": "python benchmarks/report_height.py" + (f" --old {args.old}" if args.old else ""),
           "rows": []}
    tmp = Path(tempfile.mkdtemp(prefix="report-height-"))
    try:
        for n in (20, 44):
            run = fake_run(tmp / str(n), n=n)
            row = {"trials": n, "height_px": height(report(ROOT, run), tmp / "profile")}
            if args.old:
                row["old_height_px"] = height(report(args.old, run), tmp / "profile")
            out["rows"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
