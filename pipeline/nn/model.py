"""The architectures edgehook trains, rebuilt from validated metadata, never unpickled.

`edgehook-cnn`: edgehook's own CNN, conv-BN-ReLU stages of 32/64/128/... channels with 2x2
max pooling between them, as many stages as the input size needs to come down to at most
8x8 (3 for 8 to 32 px, 6 for 224 px), global average pooling and a linear head.
torchvision's quantizable families (mobilenet_v2, mobilenet_v3_large, resnet18,
shufflenet_v2_x0_5/x1_0) are built from torchvision's own code with `weights=None`.

Every model's classifier head (its last Linear) computes in float from int8 weights
(quantize.WeightOnlyLinear says why), so the dequantisation moves in front of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import JobError

EDGEHOOK_CNN = "edgehook-cnn"
TORCHVISION = (
    "mobilenet_v2",
    "mobilenet_v3_large",
    "resnet18",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
)
ARCHS = (EDGEHOOK_CNN, *TORCHVISION)
# shufflenet's quantized global mean fails on a 1x1 map (what 32 px inputs leave), so 64.
MIN_SIZE = {
    EDGEHOOK_CNN: 8,
    **dict.fromkeys(TORCHVISION, 32),
    "shufflenet_v2_x0_5": 64,
    "shufflenet_v2_x1_0": 64,
}
MAX_SIZE = 512
# The input size chosen when none is set: the images' median short side, clamped to this
# (a 2-core CPU trains a 224 px torchvision model at a few images a second).
AUTO_MAX_SIZE = {EDGEHOOK_CNN: 64, **dict.fromkeys(TORCHVISION, 128)}
CHANNELS = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    in_channels: int
    height: int
    width: int
    num_classes: int
    # edgehook-cnn's first stage width (TrainConfig.stem_width; "channels" in the model file
    # format, which older models keep); the torchvision families ignore it
    channels: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """A spec from untrusted metadata: a known architecture and sane sizes, or JobError."""
        if not isinstance(data, dict) or data.get("arch") not in ARCHS:
            arch = data.get("arch") if isinstance(data, dict) else None
            raise JobError(
                f"model architecture {arch!r} is not one edgehook builds ({', '.join(ARCHS)})"
            )
        sizes: dict[str, Any] = {
            k: data.get(k) for k in ("in_channels", "height", "width", "num_classes", "channels")
        }
        bad = [k for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:  # "16", 16.5, Infinity or absent: refused, never coerced
            raise JobError(f"model metadata: spec.{bad[0]} is not a whole number")
        spec = cls(arch=str(data["arch"]), **sizes)
        spec.check()
        return spec

    def check(self) -> None:
        low = MIN_SIZE[self.arch]
        if (
            self.in_channels not in ((3,) if self.arch in TORCHVISION else (1, 3))
            or not low <= self.height <= MAX_SIZE
            or not low <= self.width <= MAX_SIZE
            or not 2 <= self.num_classes <= 1000
            or self.channels not in CHANNELS
        ):
            raise JobError(f"model metadata has sizes edgehook does not build: {self.to_dict()}")


def stages(size: int) -> int:
    """edgehook-cnn's stage count: enough 2x2 poolings to bring `size` to at most 8."""
    return min(6, max(3, math.ceil(math.log2(size / 8)) + 1)) if size > 8 else 3


class EdgeCNN(nn.Module):
    """Conv-BN-ReLU stages with max pooling between them, global pooling, a linear head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        widths = [
            min(spec.channels * 2**i, 256) for i in range(stages(min(spec.height, spec.width)))
        ]
        blocks: list[nn.Module] = []
        before = spec.in_channels
        for i, width in enumerate(widths):
            if i:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(before, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )
            before = width
        self.quant = QuantStub()
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dequant = DeQuantStub()
        self.fc = nn.Linear(before, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.quant(x)))
        return self.fc(torch.flatten(self.dequant(x), 1))

    def fuse_model(self, is_qat: bool = True) -> None:
        from torch.ao.quantization import fuse_modules, fuse_modules_qat

        fuse = fuse_modules_qat if is_qat else fuse_modules
        for block in self.features:
            if isinstance(block, nn.Sequential):
                fuse(block, [["0", "1", "2"]], inplace=True)


def build(spec: ModelSpec, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A float model for `spec`, edgehook's code or torchvision's: random weights, or
    `weights` (a state dict of the same architecture, e.g. ImageNet weights) for everything
    but the head, which is new (its classes are the dataset's)."""
    spec.check()
    if spec.arch == EDGEHOOK_CNN:
        model: nn.Module = EdgeCNN(spec)
    else:
        from torchvision.models import quantization

        factory: Callable[..., nn.Module] = getattr(quantization, spec.arch)
        model = factory(weights=None, quantize=False, num_classes=spec.num_classes)
    if weights is not None:
        load_backbone(model, weights)
    return model if spec.arch == EDGEHOOK_CNN else float_head(model)


def load_backbone(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor but the head's from `weights`: each must be there with its shape, and
    nothing else may be (a file for another architecture is refused, naming a key)."""
    head = head_name(model) + "."
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in weights.items() if not k.startswith(head)}
    missing = sorted(set(own) - set(given))
    unknown = sorted(set(given) - set(own))
    if missing or unknown:
        which = f"lack {missing[0]}" if missing else f"hold {unknown[0]}, which it has no place for"
        raise JobError(
            f"the pretrained weights do not fit {type(model).__name__}: they {which} "
            f"({len(missing)} missing, {len(unknown)} unknown)"
        )
    for key, tensor in given.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise JobError(
                f"the pretrained weights' {key} is {tuple(tensor.shape)}; the model's is "
                f"{tuple(own[key].shape)}"
            )
    model.load_state_dict(given, strict=False)


def head_name(model: nn.Module) -> str:
    """The classifier head: the last Linear layer (every family here ends with one)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise JobError("the model has no linear head")
    return names[-1]


def float_head(model: nn.Module) -> nn.Module:
    """Move a torchvision model's dequantisation in front of its head, so the head gets
    float input (its weights are int8, its logits float)."""
    from torch.ao.quantization import DeQuantStub

    name = head_name(model)
    model.set_submodule(name, nn.Sequential(DeQuantStub(), model.get_submodule(name)))
    model.set_submodule("dequant", nn.Identity())
    return model


def normalise(images: np.ndarray, normalisation: dict[str, list[float]]) -> torch.Tensor:
    """float (N, C, H, W) in [0, 1] -> the model's input."""
    mean = np.asarray(normalisation["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(normalisation["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((images - mean) / std))
