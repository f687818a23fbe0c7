"""The report of a finished search (``search report``): one self-contained HTML page plus PNGs
(:mod:`~runners.report.page`), the design-space statistics it shows (:mod:`~runners.report.edf`) and the command
(:mod:`~runners.report.cli`)."""
