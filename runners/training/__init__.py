"""Proxy training of one architecture: datasets prepared once and held on the device
(:mod:`~runners.training.data`), the device and its memory (:mod:`~runners.training.device`), the training loop
(:mod:`~runners.training.loop`) and the ``search train`` command (:mod:`~runners.training.cli`)."""
