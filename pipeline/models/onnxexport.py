"""`edgehook model export --format onnx`: the trained network as an ONNX file that needs
nothing else: input [0, 1] pixels (N, C, H, W), normalisation and softmax inside the graph,
classes and input size in its metadata.

int8 as QDQ: the model's numbers from its int8 file put into plain FakeQuantize modules
(torch's legacy exporter turns those into QuantizeLinear/DequantizeLinear; the fused QAT
fake quantizer does not export), so onnxruntime computes what edgehook's int8 model does:
uint8 activations with each layer's own scale and zero point, int8 per-channel weights.
`fp32=True` (or a QDQ export that fails) writes the float network instead, and says why in
the metadata.

`target="tensorrt"`: TensorRT's explicit quantization takes only symmetric Q/DQ (every zero
point an int8 0), so the activations go out as int8: a symmetric model's quint8 zero point
of 128 is that very grid shifted by 128, so the numbers are the int8 file's. An affine
model cannot be written so, and a failed export is an error (no quiet fp32 fallback).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    FakeQuantizeBase,
    FixedQParamsFakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)

from core.errors import JobError
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import load_parts
from pipeline.nn.int8 import int8_from_tensors, qat_from_tensors
from pipeline.nn.quantize import backend, quiet

OPSET = 17
INPUT, OUTPUT = "image", "probabilities"
TARGETS = ("onnxruntime", "tensorrt")
_SHIFT = 128  # a symmetric quint8 zero point: int8 = quint8 - 128 on the same scale


class _Serving(nn.Module):
    """[0, 1] pixels in, probabilities out: what a consumer of the file feeds and reads."""

    def __init__(self, model: nn.Module, normalisation: dict[str, list[float]]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(normalisation["mean"]).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(normalisation["std"]).reshape(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return torch.softmax(self.model((image - mean) / std), dim=1)


def _plain(
    tensors: dict[str, torch.Tensor], owner: str, role: str, current: Any, signed: bool
) -> FakeQuantize:
    """A FakeQuantize holding exactly the int8 file's scale and zero point for `owner`'s
    weight (int8, per channel where the file has one scale per channel) or output (uint8;
    int8 with zero point 0 when `signed`). An output the file has no numbers for is one
    torch quantizes with fixed ones (the hardsigmoid of mobilenet_v3's squeeze-excitation:
    1/256 from 0): `current` holds them; signed, that range [0, 1] takes steps of 1/128."""
    if role == "weight_fake_quant":
        scales = tensors[f"{owner}.weight_scales"].float()
        zero_points = tensors[f"{owner}.weight_zero_points"].int()
        per_channel = scales.numel() > 1
        fake_quant = FakeQuantize(
            observer=MovingAveragePerChannelMinMaxObserver
            if per_channel
            else MovingAverageMinMaxObserver,
            quant_min=-128,
            quant_max=127,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
            **({"ch_axis": 0} if per_channel else {}),
        )
    else:
        fixed = isinstance(current, FixedQParamsFakeQuantize)
        if f"{owner}.scale" not in tensors and not fixed:
            raise JobError(f"the int8 file has no output scale for {owner}")
        scales = current.scale if fixed else tensors[f"{owner}.scale"].float()
        zero_points = current.zero_point if fixed else tensors[f"{owner}.zero_point"].int()
        if signed:
            if fixed:
                scales, zero_points = scales * 2, torch.zeros_like(zero_points)
            elif int(zero_points.reshape(-1)[0]) != _SHIFT:
                raise JobError(f"{owner}'s output is not symmetric (zero point {zero_points})")
            else:
                zero_points = zero_points - _SHIFT
        fake_quant = FakeQuantize(
            observer=MovingAverageMinMaxObserver,
            quant_min=-128 if signed else 0,
            quant_max=127 if signed else 255,
            dtype=torch.qint8 if signed else torch.quint8,
            qscheme=torch.per_tensor_symmetric if signed else torch.per_tensor_affine,
        )
    fake_quant.scale = scales.clone()
    fake_quant.zero_point = zero_points.clone()
    fake_quant.disable_observer()
    fake_quant.enable_fake_quant()
    return fake_quant


def network(
    directory: Path, fp32: bool, target: str = "onnxruntime"
) -> tuple[nn.Module, ModelMeta, str]:
    """The serving network for export: int8 QDQ (for `target`), or fp32; and a line saying
    which."""
    meta, model, _, tensors = load_parts(directory)
    # The checks `infer` makes (scales finite and positive, zero points in range, no tensor
    # the model has no place for), by the same function, before anything is exported.
    int8_from_tensors(copy.deepcopy(model), tensors, backend())
    signed = target == "tensorrt" and not fp32
    if signed and meta.quantization != "symmetric":
        raise JobError(
            f"model {directory.name} has {meta.quantization} int8 activations, which TensorRT "
            'cannot take: retrain it with [training] quantization = "symmetric", or export --fp32'
        )
    with quiet():
        qat = qat_from_tensors(model, tensors, backend(), meta.engine, meta.quantization).eval()
        for name, module in list(qat.named_modules()):
            if isinstance(module, FakeQuantizeBase):
                owner, _, role = name.rpartition(".")
                qat.set_submodule(
                    name, nn.Identity() if fp32 else _plain(tensors, owner, role, module, signed)
                )
    if fp32:
        what = "fp32 (dequantized int8 weights, no QDQ)"
    elif signed:
        what = "int8 QDQ for TensorRT (int8 activations, int8 per-channel weights, zero points 0)"
    else:
        what = "int8 QDQ (uint8 activations, int8 per-channel weights)"
    return _Serving(qat, meta.normalisation).eval(), meta, what


def to_onnx_bytes(
    directory: Path, fp32: bool = False, target: str = "onnxruntime"
) -> tuple[bytes, dict[str, str]]:
    """The ONNX file's bytes and its edgehook metadata. QDQ unless `fp32`; a QDQ export the
    exporter refuses falls back to fp32 for onnxruntime, with the reason in the metadata."""
    if target not in TARGETS:
        raise JobError(f"unknown export target {target!r} (one of {', '.join(TARGETS)})")
    try:
        serving, meta, what = network(directory, fp32, target)
        data = _export(serving, meta)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
        if fp32 or target == "tensorrt":
            raise JobError(f"the ONNX export failed: {str(exc).splitlines()[0]}") from exc
        serving, meta, what = network(directory, fp32=True)
        what += f"; the QDQ export failed: {str(exc).splitlines()[0][:200]}"
        with quiet():
            data = _export(serving, meta)
    props = _properties(directory, meta, what)
    return _with_metadata(data, props), props


def export(
    directory: Path, out: Path, fp32: bool = False, target: str = "onnxruntime"
) -> dict[str, str]:
    """Write the ONNX file; returns its edgehook metadata."""
    data, props = to_onnx_bytes(directory, fp32, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return props


def _export(serving: nn.Module, meta: ModelMeta) -> bytes:
    spec = meta.spec
    dummy = torch.rand(1, spec["in_channels"], spec["height"], spec["width"])
    buffer = io.BytesIO()
    with quiet(), warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter's deprecation notice (it is the one that exports QDQ) and its
        # tracer's notes on the fake quantizers' flags (constants here: observers are off).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            serving,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # a file object works; the stub says paths only
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    return buffer.getvalue()


def _properties(directory: Path, meta: ModelMeta, what: str) -> dict[str, str]:
    spec = meta.spec
    return {
        "edgehook.model": directory.name,
        "edgehook.arch": str(spec["arch"]),
        "edgehook.classes": json.dumps(meta.classes),
        "edgehook.input": json.dumps(
            {
                "name": INPUT,
                "layout": "NCHW",
                "channels": spec["in_channels"],
                "height": spec["height"],
                "width": spec["width"],
                "colour": "grey" if spec["in_channels"] == 1 else "rgb",
                "range": [0.0, 1.0],
                "resize": "centre crop to a square, then bilinear resize",
            }
        ),
        "edgehook.normalisation": json.dumps({**meta.normalisation, "in_graph": True}),
        "edgehook.output": json.dumps({"name": OUTPUT, "softmax": "in_graph"}),
        "edgehook.quantization": what,
        "edgehook.weights_sha256": meta.weights_sha256,
        "edgehook.int8_accuracy": str(meta.int8_accuracy),
    }


def _with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    import onnx

    model: Any = onnx.load_from_string(data)
    _constant_inputs(model)
    model.producer_name = "edgehook"
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _constant_inputs(model: Any) -> None:
    """Point each node straight at the initializer an Identity copies (the exporter shares
    one zero point among Q/DQ nodes through Identity nodes): TensorRT's parser wants a Q/DQ
    node's scale and zero point to be initializers."""
    initializers = {t.name for t in model.graph.initializer}
    copies = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input[0] in initializers
    }
    outputs = {o.name for o in model.graph.output}
    if not copies or outputs & set(copies):
        return
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in copies)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = copies.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(kept)
