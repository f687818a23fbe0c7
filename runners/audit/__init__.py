"""The proxy-fidelity audit (``search fidelity``): does the short proxy rank architectures as longer training
does? Runs and records (:mod:`~runners.audit.fidelity`), rank statistics (:mod:`~runners.audit.stats`) and the
command (:mod:`~runners.audit.cli`)."""
