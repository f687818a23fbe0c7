"""Proxy training: datasets held on the device (:mod:`runners.data`), the training loop (:mod:`runners.train`),
the ``search train`` command (:mod:`runners.train_cli`) and a dependency-free progress printer
(:mod:`runners.progress`).

Nothing is re-exported here on purpose: ``from .train import train`` would make ``runners.train`` name the
function instead of the module. Import from the modules: ``from runners.train import train``.
"""
