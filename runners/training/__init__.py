"""Proxy training of one architecture: datasets prepared once and held on the device
(:mod:`~runners.training.data`), the device and its memory (:mod:`~runners.training.device`), the training loop
(:mod:`~runners.training.loop`) and the ``search train`` command (:mod:`~runners.training.cli`). Prepared datasets:
listing a raw source (:mod:`~runners.training.sources`), the format (:mod:`~runners.training.prepared`), making
one (:mod:`~runners.training.prepare`), the self-preparing cache (:mod:`~runners.training.cache`) and the
``search data prepare`` command (:mod:`~runners.training.prepare_cli`)."""
