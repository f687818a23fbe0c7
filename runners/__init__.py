"""Everything that runs an architecture, one subpackage per concern, each importing only those listed before it:

- :mod:`runners.common`: the progress printer and stop signals / worker processes every command shares;
- :mod:`runners.training`: proxy training: datasets (:mod:`~runners.training.data`), the device
  (:mod:`~runners.training.device`), the training loop (:mod:`~runners.training.loop`) and ``search train``;
- :mod:`runners.search`: a search: the trial core, records and results, storages, the rules both engines share,
  the Optuna and Ray Tune engines and ``search run`` / ``search show``;
- :mod:`runners.audit`: the proxy-fidelity audit (``search fidelity``);
- :mod:`runners.report`: the HTML report of a finished search (``search report``).

Nothing is re-exported: import from the modules (``from runners.training.loop import train``).
"""
