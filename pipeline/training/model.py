"""The model: a small CNN whose shape comes from the data, rebuilt from validated metadata.

Two conv blocks (conv, batch norm, ReLU, 2x2 max pool) and global average pooling between
quantization stubs, then a linear head with int8 weights and float logits (WEIGHT_ONLY;
quantize.WeightOnlyLinear says why). 32/64 channels by default: big enough that int8 pays
off (the demo's 4/8-channel network was slower in int8 at batch 1 than in fp32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.errors import JobError

FAMILY = "edgehook-smallcnn-v1"
FUSE = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"]]
WEIGHT_ONLY = ["fc"]  # int8 weights, float activations


@dataclass(frozen=True)
class ModelSpec:
    in_channels: int
    height: int
    width: int
    num_classes: int
    channels: int = 32
    family: str = FAMILY

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """A spec from untrusted metadata: a known family and sane sizes, or JobError."""
        if not isinstance(data, dict) or data.get("family") != FAMILY:
            raise JobError(f"model family is not {FAMILY}; edgehook builds no other")
        try:
            spec = cls(
                in_channels=int(data["in_channels"]),
                height=int(data["height"]),
                width=int(data["width"]),
                num_classes=int(data["num_classes"]),
                channels=int(data["channels"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError(f"model metadata is incomplete or malformed ({exc})") from exc
        if (
            spec.in_channels not in (1, 3)
            or not 4 <= spec.height <= 512
            or not 4 <= spec.width <= 512
            or not 2 <= spec.num_classes <= 1000
            or spec.channels not in (8, 16, 32, 64, 128)
        ):
            raise JobError(f"model metadata has sizes edgehook does not build: {data}")
        return spec


class SmallCNN(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        width = spec.channels
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(spec.in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width * 2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 2, spec.num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(self.dequant(x), 1))
