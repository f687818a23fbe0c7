"""A search over a space: the trial core that evaluates one candidate whatever the engine
(:mod:`~runners.search.trial`), trial records (:mod:`~runners.search.records`), what a search leaves behind
(:mod:`~runners.search.results`), Optuna storages and lost trials (:mod:`~runners.search.storage`), the rules
both engines share (:mod:`~runners.search.rules`, :mod:`~runners.search.mo_pruning`), one module per engine
(:mod:`~runners.search.optuna_engine`, :mod:`~runners.search.ray_engine`; neither imports the other) and the
``search run`` / ``search show`` command (:mod:`~runners.search.cli`)."""
