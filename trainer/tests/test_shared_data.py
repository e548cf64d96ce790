"""The real dermoscopy data beside the checkout (../shared/data), when it is there."""

from collections import defaultdict

import pytest

from dermaedge_train.cli import main
from dermaedge_train.data import CLASSES, class_counts, load_classification, load_segmentation
from dermaedge_train.splits import make_split, select

from .conftest import REPO

DATA = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not (DATA / "cls" / "labels.csv").exists(), reason="../shared/data is not beside this checkout"
)


def test_reads_every_real_image_and_label():
    samples = load_classification(DATA)
    counts = dict(zip(CLASSES, class_counts(samples), strict=True))
    assert counts == {
        "MEL": 1069,
        "NV": 5823,
        "BCC": 467,
        "AK": 147,
        "BKL": 1217,
        "DF": 138,
        "VASC": 150,
        "SCC": 169,
    }
    assert len(load_segmentation(DATA)) == 1804


def test_real_split_keeps_lesions_together():
    samples = load_classification(DATA)
    assign = make_split(samples, 0.15, seed=0)
    sides = defaultdict(set)
    for s in samples:
        if s.lesion_id:
            sides[s.lesion_id].add(assign[s.image_id])
    assert sides and all(len(v) == 1 for v in sides.values())
    val = select(samples, assign, "val")
    assert 0.12 < len(val) / len(samples) < 0.18
    assert {s.label for s in val} == set(range(8))


@pytest.mark.parametrize(
    "task, arch", [("classification", "efficientnet_lite0"), ("segmentation", "unet_effnet_lite0")]
)
def test_trains_on_real_data_at_small_settings(tmp_path, task, arch):
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path),
                "--set",
                f"data.root={DATA}",
                "--set",
                f"task={task}",
                "--set",
                f"model.arch={arch}",
                "--set",
                "data.limit=160",
                "--set",
                "data.image_size=64",
                "--set",
                "data.require_all_classes=false",
                "--set",
                "data.val_fraction=0.25",
                "--set",
                "train.epochs=1",
                "--set",
                "train.batch_size=16",
                "--set",
                "train.workers=2",
            ]
        )
        == 0
    )
    assert (tmp_path / "best.pt").exists()
