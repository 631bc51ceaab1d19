"""Quantization, behind one small module: everything else calls prepare_qat, to_int8 and
backend. Today this is torch's eager-mode API (what Jetson's torch 2.3-2.5 wheels offer);
torch now deprecates it in favour of torchao, and this is the only module to change when
edgehook moves.
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from pipeline.model import FUSE

# The deprecation notices torch emits for the eager API; silenced here and only here.
_KNOWN_WARNINGS = (
    "torch.ao.quantization is deprecated",
    "Please use quant_min and quant_max",
    "torch.quantize_per_tensor, torch.quantize_per_channel",
    "_aminmax is deprecated",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def backend() -> str:
    """qnnpack on ARM (Jetson), x86 (or fbgemm on older torch) elsewhere."""
    engines = torch.backends.quantized.supported_engines
    if platform.machine().lower() in ("aarch64", "arm64") and "qnnpack" in engines:
        return "qnnpack"
    return "x86" if "x86" in engines else "fbgemm"


def prepare_qat(model: nn.Module, engine: str) -> nn.Module:
    """Fuse conv+bn+relu and insert fake quantization for training."""
    with quiet():
        torch.backends.quantized.engine = engine
        model.train()
        fused = torch.ao.quantization.fuse_modules_qat(model, FUSE)
        fused.qconfig = torch.ao.quantization.get_default_qat_qconfig(engine)
        return torch.ao.quantization.prepare_qat(fused)


def to_int8(model: nn.Module, engine: str) -> nn.Module:
    """The int8 model for inference, converted on the CPU."""
    with quiet():
        torch.backends.quantized.engine = engine
        model = model.to("cpu").eval()
        return torch.ao.quantization.convert(model)


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A forward pass without gradients, with the API's notices silenced."""
    with quiet(), torch.no_grad():
        return model(x)
