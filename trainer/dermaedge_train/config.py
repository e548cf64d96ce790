"""The run configuration: one YAML file, every key optional, unknown keys refused.

The resolved config is saved as ``config.yaml`` in each run directory, so a run can be
repeated exactly (``dermaedge-train train --config RUN/config.yaml``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A config key is unknown or its value is wrong; the message names the key."""


@dataclass
class CropBorder:
    enabled: bool = True
    luma_threshold: int = 20
    min_bright_fraction: float = 0.5
    min_keep: float = 0.5


@dataclass
class LesionCrop:
    # Crop around the lesion mask: ground-truth masks for segmentation data, masks predicted
    # by the segmenter (``masks_dir``, <image id>.png) for classification data.
    enabled: bool = False
    margin: float = 0.25
    masks_dir: str = ""


@dataclass
class ColorConstancy:
    enabled: bool = False
    p: float = 6.0


@dataclass
class Augment:
    dihedral: bool = True  # flips and 90-degree rotations
    scale: tuple[float, float] = (0.35, 1.0)  # random-resized-crop area range
    ratio: tuple[float, float] = (0.75, 1.3333)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass
class Data:
    root: str = "../shared/data"
    layout: str = "auto"  # auto | simple | isic2019 | ham10000 (cls); simple | isic2018 (seg)
    images: str = ""
    masks: str = ""
    metadata: str = ""
    require_all_classes: bool = True
    limit: int = 0  # use a seeded random subset of N samples (smoke runs); 0 = all
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    # A split of its own for the softmax temperature and the melanoma operating point, so the
    # validation figures are measured on images nothing was fitted on (0: fit on validation).
    calib_fraction: float = 0.0
    holdout_source: str = ""  # leave-one-source-out: this `source` becomes the test split
    split_file: str = ""  # reuse a saved split.csv instead of making one
    seed: int = 0
    image_size: int = 224
    # Decode every image once into a uint8 array at image_size (after the border and lesion
    # crops) kept in this folder, instead of decoding JPEGs every epoch; "" = no cache.
    cache: str = ""
    crop_border: CropBorder = field(default_factory=CropBorder)
    lesion_crop: LesionCrop = field(default_factory=LesionCrop)
    color_constancy: ColorConstancy = field(default_factory=ColorConstancy)
    augment: Augment = field(default_factory=Augment)
    balance: str = "weighted_loss"  # weighted_loss | sampler | none
    mean: tuple[float, float, float] | None = None  # default: the architecture's
    std: tuple[float, float, float] | None = None


@dataclass
class Model:
    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    dropout: float = 0.3
    freeze: int = 0  # number of early stages to freeze
    width: int = 32  # base width of the plain U-Net


@dataclass
class Train:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    workers: int = 4
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on a CPU that has native bf16 (AVX512-BF16, AMX)
    channels_last: bool = True
    tta: bool = True  # flip TTA in validation
    log_every: int = 20
    # A time budget instead of a number of epochs: the learning-rate schedule and the size
    # phases follow the fraction of the budget spent; 0 = run `epochs` epochs.
    max_minutes: float = 0.0
    # Progressive resizing ("train low, finish high"): train at these sizes, each for its share
    # of the run (time or steps); the last must be data.image_size. Empty = image_size only.
    sizes: tuple[float, ...] = ()
    size_shares: tuple[float, ...] = ()
    checkpoint_minutes: float = 10.0  # last.pt at least this often, mid-epoch too
    val_every: int = 1  # validate every N epochs (and at the end)
    select: str = "best"  # best: best validation epoch; last: the end of the schedule


@dataclass
class Config:
    task: str = "classification"  # classification | segmentation
    name: str = ""
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults) and apply ``key.sub=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: config file not found") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: write it as key.sub=value")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(fields)})")
        f = fields[key]
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    if value is None:
        return default if default is None else _fail(key, value, default)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            _fail(key, value, default)
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(key, value, default)
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            _fail(key, value, default)
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            _fail(key, value, default)
        return value
    if isinstance(default, tuple) or default is None:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) for v in value
        ):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    return value


def _fail(key: str, value: Any, default: Any) -> None:
    raise ConfigError(
        f"{key}: expected a {type(default).__name__} (like {default!r}), got {value!r}"
    )


def validate(cfg: Config) -> None:
    d, m, t = cfg.data, cfg.model, cfg.train
    checks = [
        (cfg.task in ("classification", "segmentation"), "task", "classification or segmentation"),
        (0 < d.val_fraction < 1, "data.val_fraction", "between 0 and 1"),
        (0 <= d.test_fraction < 1 - d.val_fraction, "data.test_fraction", "in [0, 1 - val)"),
        (d.image_size >= 32 and d.image_size % 32 == 0, "data.image_size", "a multiple of 32"),
        (
            d.balance in ("weighted_loss", "sampler", "none"),
            "data.balance",
            "weighted_loss, sampler or none",
        ),
        (
            0 < d.augment.scale[0] <= d.augment.scale[1] <= 1,
            "data.augment.scale",
            "two numbers 0 < lo <= hi <= 1",
        ),
        (
            len(d.augment.scale) == 2 and len(d.augment.ratio) == 2,
            "data.augment",
            "scale and ratio as [lo, hi]",
        ),
        (d.mean is None or len(d.mean) == 3, "data.mean", "three numbers"),
        (
            d.std is None or (len(d.std) == 3 and min(d.std) > 0),
            "data.std",
            "three positive numbers",
        ),
        (d.lesion_crop.margin >= 0, "data.lesion_crop.margin", ">= 0"),
        (d.color_constancy.p >= 1, "data.color_constancy.p", ">= 1"),
        (0 <= d.calib_fraction < 1, "data.calib_fraction", "in [0, 1)"),
        (
            d.val_fraction + d.test_fraction + d.calib_fraction < 1,
            "data.calib_fraction",
            "small enough to leave training images (val + test + calib < 1)",
        ),
        (t.epochs >= 1, "train.epochs", ">= 1"),
        (t.max_minutes >= 0, "train.max_minutes", ">= 0 (0: run train.epochs)"),
        (t.checkpoint_minutes > 0, "train.checkpoint_minutes", "> 0"),
        (t.select in ("best", "last"), "train.select", "best or last"),
        (t.val_every >= 1, "train.val_every", ">= 1"),
        (
            len(t.sizes) == len(t.size_shares),
            "train.size_shares",
            "one share per entry of train.sizes",
        ),
        (
            all(s >= 32 and s % 32 == 0 for s in t.sizes),
            "train.sizes",
            "multiples of 32",
        ),
        (
            not t.sizes or (t.sizes[-1] == d.image_size and max(t.sizes) == d.image_size),
            "train.sizes",
            "ending at data.image_size (the export size), none larger",
        ),
        (
            not t.size_shares or (min(t.size_shares) > 0 and abs(sum(t.size_shares) - 1) < 1e-6),
            "train.size_shares",
            "positive and summing to 1",
        ),
        (t.batch_size >= 1, "train.batch_size", ">= 1"),
        (t.lr > 0, "train.lr", "> 0"),
        (t.device in ("auto", "cpu", "cuda"), "train.device", "auto, cpu or cuda"),
        (0 <= m.dropout < 1, "model.dropout", "in [0, 1)"),
        (m.freeze >= 0, "model.freeze", ">= 0"),
    ]
    for ok, key, want in checks:
        if not ok:
            raise ConfigError(f"{key}: must be {want}")
