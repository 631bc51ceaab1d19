"""The int8 model as plain tensors, for the model file (pipeline/models/modelfile.py).

safetensors holds no quantized dtypes, and a pickle or a TorchScript archive from the
internet runs code when loaded, so the export is written by hand: per layer its int8 weight,
the weight's scales and zero points (one per output channel, or one) and its float bias; per
module with a quantized output (the input quantizer, convs, linears, quantized adds and
activations) its output's scale and zero point (the weight-only head has none). Loading
checks every tensor's name, shape and dtype against the architecture, for every family.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from core.errors import JobError
from pipeline.nn.quantize import (
    SCHEMES,
    WeightOnlyLinear,
    fold_bn,
    observe_afresh,
    prepare_qat,
    qconfig,
    quantize_on_grid,
    quiet,
    to_int8,
)

_WEIGHT_KEYS = ("weight", "weight_scales", "weight_zero_points", "bias")
_OUTPUT_KEYS = ("scale", "zero_point")


def _layers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """The layers that hold int8 weights (conv, linear, the weight-only head), by name."""
    for name, module in model.named_modules():
        if isinstance(module, WeightOnlyLinear) or (
            hasattr(module, "set_weight_bias") and hasattr(module, "scale")
        ):
            yield name, module


def _quantized_outputs(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """The modules whose output is quantized with a scale and zero point of their own."""
    for name, module in model.named_modules():
        if hasattr(module, "scale") and hasattr(module, "zero_point"):
            yield name, module


def int8_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every number the int8 model computes with, as plain (int8, int64, float) tensors."""
    out = {}
    for name, module in _quantized_outputs(model):
        out[f"{name}.scale"] = torch.tensor([float(module.scale)], dtype=torch.float64)
        out[f"{name}.zero_point"] = torch.tensor([int(module.zero_point)], dtype=torch.int64)
    for name, layer in _layers(model):
        weight = layer.weight()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if weight.q_per_channel_axis() != 0:
                raise ValueError(f"{name}: weights quantized along axis other than 0")
            scales = weight.q_per_channel_scales().double()
            zero_points = weight.q_per_channel_zero_points().long()
        else:
            scales = torch.tensor([weight.q_scale()], dtype=torch.float64)
            zero_points = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        bias = layer.bias()
        out.update(
            {
                f"{name}.weight": weight.int_repr().contiguous(),
                f"{name}.weight_scales": scales.contiguous(),
                f"{name}.weight_zero_points": zero_points.contiguous(),
                f"{name}.bias": (bias if bias is not None else torch.zeros(weight.shape[0]))
                .detach()
                .float()
                .contiguous(),
            }
        )
    return out


def _skeleton(model: nn.Module, engine: str) -> nn.Module:
    """The converted int8 structure of a fresh model; its numbers are placeholders."""
    return to_int8(fold_bn(prepare_qat(model, engine)), engine)


def _set_output(module: Any, tensors: dict[str, torch.Tensor], name: str) -> None:
    """A module's output scale and zero point from the file (checked: positive, finite)."""
    scale = float(_expect(tensors, f"{name}.scale", (1,)))
    zero_point = int(_expect(tensors, f"{name}.zero_point", (1,)))
    if not (scale > 0 and scale < float("inf")):
        raise JobError(f"the int8 weights' {name}.scale is not a positive finite number")
    if not 0 <= zero_point <= 255:  # uint8 activations
        raise JobError(f"the int8 weights' {name}.zero_point {zero_point} is outside 0..255")
    if isinstance(module.scale, torch.Tensor):  # the input quantizer keeps them as buffers
        module.scale.fill_(scale)
        module.zero_point.fill_(zero_point)
    else:
        module.scale, module.zero_point = scale, zero_point


def _expect(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    tensor = tensors.get(key)
    if tensor is None:
        raise JobError(f"the int8 weights lack {key}")
    if tuple(tensor.shape) != shape:
        raise JobError(f"the int8 weights' {key} is {tuple(tensor.shape)}, expected {shape}")
    return tensor


def _weight(tensors: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """A layer's float weight from its int8 values, scales and zero points (checked)."""
    values = _expect(tensors, f"{name}.weight", tuple(shape))
    scales = tensors.get(f"{name}.weight_scales")
    zero_points = tensors.get(f"{name}.weight_zero_points")
    if (
        values.dtype != torch.int8
        or scales is None
        or zero_points is None
        or scales.shape != zero_points.shape
        or scales.numel() not in (1, shape[0])
        or not bool(torch.isfinite(scales).all() and (scales > 0).all())
        or not bool(((zero_points >= -128) & (zero_points <= 127)).all())
    ):
        raise JobError(f"the int8 weights' {name}.weight is malformed")
    view = (-1,) + (1,) * (len(shape) - 1)
    return (values.double() - zero_points.reshape(view)) * scales.reshape(view)


def _bias(tensors: dict[str, torch.Tensor], name: str, size: int) -> torch.Tensor:
    bias = _expect(tensors, f"{name}.bias", (size,))
    if bias.dtype != torch.float32 or not bool(torch.isfinite(bias).all()):
        raise JobError(f"the int8 weights' {name}.bias is not finite float32")
    return bias


def int8_from_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], engine: str) -> nn.Module:
    """The int8 model: `model`'s converted structure with every number from `tensors`."""
    int8 = _skeleton(model, engine)
    expected: set[str] = set()
    with quiet():
        for name, module in list(_quantized_outputs(int8)):
            _set_output(module, tensors, name)
            expected |= {f"{name}.{k}" for k in _OUTPUT_KEYS}
        for name, layer in _layers(int8):
            placeholder = layer.weight()
            weight = quantize_on_grid(
                _weight(tensors, name, placeholder.shape).float(),
                tensors[f"{name}.weight_scales"],
                tensors[f"{name}.weight_zero_points"],
            )
            bias = _bias(tensors, name, placeholder.shape[0])
            expected |= {f"{name}.{k}" for k in _WEIGHT_KEYS}
            if isinstance(layer, WeightOnlyLinear):
                int8.set_submodule(name, WeightOnlyLinear(weight, bias))
                continue
            layer.set_weight_bias(weight, bias)
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise JobError(f"the int8 weights hold tensors this model has no place for: {unknown}")
    return int8


def qat_from_tensors(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    engine: str,
    saved_engine: str,
    scheme: str = "affine",
) -> nn.Module:
    """A QAT model (batch norm folded) that computes what the saved int8 model computes:
    what fine-tuning a previous model trains, in the scheme it was saved in. Weights are the
    dequantized int8 weights (each weight observer measures them); each activation observer
    starts from the float range the saved scale and zero point cover under the engine and
    scheme the model was trained for."""
    if saved_engine not in ("x86", "fbgemm", "qnnpack", "onednn"):
        raise JobError(f"the model was trained for an unknown quantized engine {saved_engine!r}")
    if scheme not in SCHEMES:
        raise JobError(f"the model's quantization {scheme!r} is not one edgehook knows")
    with quiet():
        saved = qconfig(saved_engine, scheme).activation()
    qat = fold_bn(prepare_qat(model, engine, scheme))
    with torch.no_grad():
        for name, layer in qat.named_modules():
            if hasattr(layer, "weight_fake_quant"):
                layer.weight.copy_(_weight(tensors, name, layer.weight.shape).float())
                layer.bias.copy_(_bias(tensors, name, layer.weight.shape[0]))
                observe_afresh(layer.weight_fake_quant, layer.weight)
            if isinstance(layer, FakeQuantizeBase):
                continue  # the fake quantizers themselves: their owner is set above
            if hasattr(layer, "activation_post_process") and f"{name}.scale" in tensors:
                scale = float(_expect(tensors, f"{name}.scale", (1,)))
                zero_point = int(_expect(tensors, f"{name}.zero_point", (1,)))
                observer = layer.activation_post_process.activation_post_process
                observer.min_val.fill_((saved.quant_min - zero_point) * scale)
                observer.max_val.fill_((saved.quant_max - zero_point) * scale)
    return qat
