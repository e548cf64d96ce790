"""Every architecture builds by name, runs, and exports to standard-domain ONNX."""

import numpy as np
import pytest
import torch

from dermaedge_train.evaluate import onnx_logits_fn
from dermaedge_train.export import export_onnx
from dermaedge_train.models import build_model


@pytest.mark.parametrize(
    "task, arch, size, out",
    [
        ("classification", "efficientnet_lite0", 64, (1, 8)),
        ("classification", "xception", 96, (1, 8)),
        ("segmentation", "unet", 64, (1, 1, 64, 64)),
        ("segmentation", "unet_effnet_lite0", 64, (1, 1, 64, 64)),
    ],
)
def test_architecture_exports_and_matches_onnxruntime(tmp_path, task, arch, size, out):
    torch.manual_seed(0)
    model = build_model(task, arch, size, pretrained=arch.endswith("lite0"), width=8).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        y = model(x).numpy()
    assert y.shape == out
    path = tmp_path / f"{arch}.onnx"
    export_onnx(model, size, path, "logits")
    assert np.abs(onnx_logits_fn(path)(x.numpy()) - y).max() < 1e-4


def test_pretrained_encoder_weights_are_loaded():
    a = build_model("classification", "efficientnet_lite0", 64, pretrained=True)
    b = build_model("classification", "efficientnet_lite0", 64, pretrained=False)
    stem_a, stem_b = a.net._conv_stem.weight, b.net._conv_stem.weight
    assert not torch.equal(stem_a, stem_b)
    # ImageNet stem filters are smooth edge/colour detectors, not init noise
    again = build_model("classification", "efficientnet_lite0", 64, pretrained=True)
    assert torch.equal(stem_a, again.net._conv_stem.weight)


def test_freeze_stops_gradients_in_early_layers():
    m = build_model("classification", "xception", 96, pretrained=False, freeze=3)
    assert not any(p.requires_grad for p in m.net.conv1.parameters())
    assert not any(p.requires_grad for p in m.net.block2.parameters())
    assert all(p.requires_grad for p in m.net.block3.parameters())
    assert all(p.requires_grad for p in m.net.fc.parameters())


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match=r"model.arch 'resnet50': classifiers are"):
        build_model("classification", "resnet50", 64)
