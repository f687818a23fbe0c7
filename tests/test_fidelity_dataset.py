"""digits_hard: the embedded task made from scikit-learn's digits, deterministic and never split across twins."""

import torch

from runners.training.data import _load_source, grouped_split, load_dataset, stratified_split
from search_space.config import TrainConfig


def test_digits_hard_is_deterministic_sized_and_balanced():
    _load_source.cache_clear()
    first = _load_source("digits_hard", None, None, 512, 10, 3)
    _load_source.cache_clear()
    again = _load_source("digits_hard", None, None, 512, 10, 3)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.train_y, again.train_y)
    assert first.train_x.shape == (2 * 1797, 1, 32, 32) and first.train_x.dtype == torch.uint8
    counts = torch.bincount(first.train_y)
    assert len(counts) == 10 and int(counts.min()) >= 2 * 174
    # the two copies of a digit differ (each has its own distortions) but share the label and the group
    n = 1797
    assert torch.equal(first.train_y[:n], first.train_y[n:]) and torch.equal(first.groups[:n], first.groups[n:])
    assert (first.train_x[:n] != first.train_x[n:]).flatten(1).any(1).all()


def test_digits_hard_splits_never_separate_the_copies_of_a_digit():
    data = load_dataset(TrainConfig(dataset="digits_hard", seed=3, train_fraction=0.5), image_size=16)
    source = _load_source("digits_hard", None, None, 512, 10, 3)
    groups = {split: set(source.groups[rows].tolist()) for split, rows in data.rows.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert data.train_x.shape[1:] == (1, 16, 16) and data.num_classes == 10
    # whole groups: every split holds both copies of each of its digits
    for split, rows in data.rows.items():
        assert len(rows) == 2 * len(groups[split])


def test_grouped_split_keeps_groups_whole_and_without_groups_is_the_stratified_split():
    labels = torch.arange(40) % 4
    assert all(torch.equal(a, b) for a, b in zip(grouped_split(labels, None, 0.3, 1),
                                                 stratified_split(labels, 0.3, 1)))
    groups = torch.arange(40) // 2  # twenty pairs; a pair shares its label
    rest, taken = grouped_split(groups % 4, groups, 0.4, 1)
    assert not set(groups[rest].tolist()) & set(groups[taken].tolist())
    assert len(taken) == 16 and len(rest) == 24  # 2 of the 5 pairs of each of the 4 labels


def test_digits_pairs_is_deterministic_and_reads_two_digits():
    _load_source.cache_clear()
    first = _load_source("digits_pairs", None, None, 512, 10, 3)
    _load_source.cache_clear()
    again = _load_source("digits_pairs", None, None, 512, 10, 3)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.train_y, again.train_y)
    assert first.train_x.shape == (4000, 1, 32, 32) and first.num_classes == 100
    counts = torch.bincount(first.train_y, minlength=100)
    assert len(counts) == 100 and int(counts.min()) > 0  # every class "00" to "99" occurs
    # the splits are stratified by the left digit, which is the tens of the class
    assert torch.equal(first.strata, first.train_y // 10)
    # every image shows a digit in each half (digit strokes near 255; the background noise has sd 10)
    assert (first.train_x[..., :16].flatten(1).amax(1) > 160).all()
    assert (first.train_x[..., 16:].flatten(1).amax(1) > 160).all()


def test_digits_pairs_splits_never_share_a_digit_block():
    data = load_dataset(TrainConfig(dataset="digits_pairs", seed=5), image_size=16)
    source = _load_source("digits_pairs", None, None, 512, 10, 3)
    groups = {split: set(source.groups[rows].tolist()) for split, rows in data.rows.items()}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert data.num_classes == 100 and data.train_x.shape[1:] == (1, 16, 16)
    # ten strata of about twenty blocks each: the held-out shares are close to the asked fractions
    assert abs(len(data.rows["test"]) / 4000 - 0.2) < 0.03
    assert abs(len(data.rows["val"]) / (4000 - len(data.rows["test"])) - 0.15) < 0.03
