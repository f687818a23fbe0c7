"""The small-image zoo model really learns digits to the issue's mark (slow: about two minutes on 2 cores)."""

import pytest

from runners.training.loop import train
from search_space.spec import load_spec


@pytest.mark.slow
def test_resnet18_small_reaches_97_percent_on_digits():
    spec = load_spec("spaces/zoo/resnet18_small.yaml")
    result = train(spec.model, spec.train, evaluate_test=True)
    assert result.status == "ok", result.reason
    assert result.test_accuracy >= 0.97, result.test_accuracy
