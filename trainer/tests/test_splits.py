"""Splits keep a lesion's images together, cover every class, and reproduce from split.csv."""

from collections import defaultdict

import pytest

from dermaedge_train.data import DataError, load_classification
from dermaedge_train.splits import load_split, make_split, save_split, select


def test_split_groups_lesions_and_stratifies(simple_root):
    samples = load_classification(simple_root)
    assign = make_split(samples, val_fraction=0.5, seed=3)
    by_lesion = defaultdict(set)
    for s in samples:
        by_lesion[s.lesion_id].add(assign[s.image_id])
    assert all(len(v) == 1 for v in by_lesion.values())  # no lesion on both sides
    val = select(samples, assign, "val")
    assert {s.label for s in val} == set(range(8))  # every class in validation
    assert 8 <= len(val) <= 24


def test_split_is_deterministic_and_reloads(simple_root, tmp_path):
    samples = load_classification(simple_root)
    a = make_split(samples, 0.5, seed=1)
    assert a == make_split(samples, 0.5, seed=1)
    save_split(a, tmp_path / "split.csv")
    assert load_split(tmp_path / "split.csv", samples) == a


def test_split_file_must_cover_the_dataset(simple_root, tmp_path):
    samples = load_classification(simple_root)
    (tmp_path / "split.csv").write_text("image,split\nISIC_0000000,train\n")
    with pytest.raises(DataError, match=r"31 image\(s\) of the dataset are not in the split"):
        load_split(tmp_path / "split.csv", samples)


def test_holdout_source_becomes_the_test_split(simple_root):
    samples = load_classification(simple_root)
    assign = make_split(samples, 0.3, holdout_source="synthetic_b")
    test = select(samples, assign, "test")
    assert test and all(s.source == "synthetic_b" for s in test)
    assert all(s.source != "synthetic_b" for s in samples if assign[s.image_id] != "test")
    with pytest.raises(DataError, match=r"no image has source 'nowhere'"):
        make_split(samples, 0.3, holdout_source="nowhere")
