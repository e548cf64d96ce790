"""The OOD statistics (ood.py): the distance, the whitening, the leave-one-source-out margin,
and the exported graph's second output."""

import numpy as np
import pytest
import torch

from dermaedge_train import ood
from dermaedge_train.export import export_onnx
from dermaedge_train.models import build_model


def test_whitened_distance_is_mahalanobis_in_the_kept_directions():
    rng = np.random.default_rng(0)
    scale = np.array([3.0, 1.0, 0.5])  # shrinkage (1e-3 of the mean variance) stays negligible
    train = rng.normal(size=(4000, 3)) * scale
    mean, proj = ood.fit(train, components=3)
    # one standard deviation along any axis is distance 1, whatever the axis' scale
    for axis in range(3):
        x = np.zeros((1, 3))
        x[0, axis] = scale[axis]
        assert ood.distance(x, mean, proj)[0] == pytest.approx(1.0, rel=0.05)
    # in-distribution squared distances average the number of components
    assert ood.distance(train, mean, proj).mean() == pytest.approx(3.0, rel=0.05)


def test_no_more_components_than_the_images_span():
    feats = np.random.default_rng(1).normal(size=(5, 40))
    _, proj = ood.fit(feats, components=64)
    assert proj.shape == (40, 4)
    with pytest.raises(ood.OodError, match="too few"):
        ood.fit(feats[:1])


def test_an_unlike_source_raises_the_margin():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(600, 4))
    b = rng.normal(size=(600, 4)) * 1.5 + 0.5  # another clinic: wider and shifted
    train = np.concatenate([a, b])
    src = ["a"] * 600 + ["b"] * 600
    calib = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) * 1.5 + 0.5])
    calib_src = ["a"] * 200 + ["b"] * 200
    margins = ood.source_margins(train, src, calib, calib_src)
    assert set(margins) == {"a", "b"}
    assert margins["b"] > 1.2 > margins["a"]
    # one source only (or small ones): no rule to apply, the caller uses the default
    assert ood.source_margins(a, ["a"] * 600, calib[:200], calib_src[:200]) == {}


def test_refusal_by_source_counts_over_the_threshold():
    got = ood.refusal_by_source(np.array([1.0, 5.0, 2.0, 9.0]), ["x", "x", "y", "y"], 4.0)
    assert got == {"x": {"n": 2, "refused": 0.5}, "y": {"n": 2, "refused": 0.5}}


def test_the_exported_graph_computes_the_same_distance(tmp_path):
    import onnxruntime as ort

    model = build_model("classification", "efficientnet_lite0", 64, False, 0.0)
    model.eval()
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(6, 3, 64, 64)).astype(np.float32))
    feats = ood.features_of_batch(model, x)
    mean, proj = ood.fit(feats)
    wrapped = ood.WithOod(model, mean, proj)
    path = tmp_path / "c.onnx"
    export_onnx(wrapped, 64, path, ["logits", ood.OUTPUT])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", ood.OUTPUT]
    for i in range(len(x)):
        logits, d = sess.run(None, {"input": x[i : i + 1].numpy()})
        assert logits.shape == (1, 8) and d.shape == (1,)
        want = ood.distance(feats[i : i + 1], mean, proj)[0]
        assert d[0] == pytest.approx(want, rel=1e-3)
    # the wrapper stays in eval mode through the export (BatchNorm keeps its statistics)
    assert not model.training and not wrapped.training
