"""What every command shares: a dependency-free progress printer (:mod:`~runners.common.progress`) and stop
signals plus worker processes started beside the main one (:mod:`~runners.common.signals`)."""
