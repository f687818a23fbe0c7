"""``search report RUN [--open]``: the command-line face of :mod:`runners.report`."""

from __future__ import annotations

import sys


def cmd_report(args) -> int:
    from runners.report.page import write_report
    from runners.search.results import find_run

    run_dir = find_run(args.run)
    result = write_report(run_dir)
    print(f"wrote {result['html']} ({result['plots']} plots) and {len(result['png'])} PNGs in {run_dir}")
    if args.open:
        import webbrowser

        if not webbrowser.open(result["html"].resolve().as_uri()):
            print(f"no browser found; open {result['html']} yourself", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write an HTML report (and PNG plots) of a search into its run directory",
                       description="Write report.html (self-contained: opens offline) and PNG plots into the run "
                                   "directory: history, Pareto front, importances, error EDFs per design choice "
                                   "(raw and at matched complexity), the trial table, block diagrams, the spec.")
    p.add_argument("run", help="run directory (runs/<name>/) or the spec that made it")
    p.add_argument("--open", action="store_true", help="open the report in a web browser")
    p.set_defaults(func=cmd_report)
