"""Quantization, behind one small module (and pipeline/nn/int8.py, the int8 model as
plain tensors): everything else calls prepare_qat, freeze_bn, fold_bn, to_int8, run and
backend. Today
this is torch's eager-mode API (what Jetson's torch 2.3-2.5 wheels offer); torch now
deprecates it in favour of torchao, and this is the only module to change when edgehook
moves.

The recipe is torch's own QAT recipe: fake quantization from the first step with batch norm
learning its statistics, then batch-norm statistics frozen for the rest of training. Frozen,
a conv + batch norm pair is one conv with folded weights, so freeze_bn measures the
statistics exactly and fold_bn swaps each fused ConvBnReLU2d for a ConvReLU2d holding the
folded weights (same fake quantizers, the weight range re-measured): the function is
unchanged, and an epoch no longer pays for simulating the fold (a division, a
multiplication and batch norm on every activation, forward and backward).
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.ao.nn.intrinsic.qat as nniqat
import torch.ao.nn.qat as nnqat
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from pipeline.nn.model import head_name

# The deprecation notices torch emits for the eager API; silenced here and only here.
_KNOWN_WARNINGS = (
    "torch.ao.quantization is deprecated",
    "Please use quant_min and quant_max",
    "torch.quantize_per_tensor, torch.quantize_per_channel",
    "_aminmax is deprecated",
    "must run observer before calling calculate_qparams",
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


# How activations are quantized. "symmetric": quint8 with zero point 128, the very grid of
# int8 with zero point 0 (subtract 128), which TensorRT's explicit Q/DQ requires; weights
# per channel, symmetric, in -127..127 on every engine. "affine": torch's default for the
# engine (x86: 0..127 with a zero point of its own, per-channel weights; qnnpack: 0..255,
# one weight scale per tensor). benchmarks/README.md has what each scored.
SCHEMES = ("symmetric", "affine")
ZERO_POINT = 128  # a symmetric activation's quint8 zero point


class SymmetricObserver(torch.ao.quantization.MovingAverageMinMaxObserver):
    """The activation range as quint8 with zero point 128 and the scale torch's fused fake
    quantizer trains with (max(-min / 128, max / 127)), so the int8 model computes exactly
    what QAT simulated; torch's own symmetric quint8 rounds the zero point to 127 for an
    explicit 0..255 range."""

    def _calculate_qparams(
        self, min_val: torch.Tensor, max_val: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = torch.clamp(min_val, max=0.0), torch.clamp(max_val, min=0.0)
        scale = torch.maximum(-low / 128, high / 127).clamp(min=float(self.eps)).reshape(1)
        return scale.float(), torch.full((1,), ZERO_POINT, dtype=torch.int64)


def qconfig(engine: str, scheme: str = "symmetric") -> Any:
    """The QAT qconfig for `engine` under `scheme` (one of SCHEMES)."""
    from torch.ao.quantization import FusedMovingAvgObsFakeQuantize, QConfig
    from torch.ao.quantization.fake_quantize import (
        fused_per_channel_wt_fake_quant_range_neg_127_to_127,
    )

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r} (one of {', '.join(SCHEMES)})")
    with quiet():
        if scheme == "affine":
            return torch.ao.quantization.get_default_qat_qconfig(engine)
        activation = FusedMovingAvgObsFakeQuantize.with_args(
            observer=SymmetricObserver,
            quant_min=0,
            quant_max=255,
            dtype=torch.quint8,
            qscheme=torch.per_tensor_symmetric,
            reduce_range=False,
        )
        return QConfig(
            activation=activation, weight=fused_per_channel_wt_fake_quant_range_neg_127_to_127
        )


def prepare_qat(model: nn.Module, engine: str, scheme: str = "symmetric") -> nn.Module:
    """Fuse conv+bn(+relu) (the model's own fuse_model: edgehook's or torchvision's) and
    insert fake quantization for training, in place. The head gets fake-quantized weights
    and float output."""
    with quiet():
        torch.backends.quantized.engine = engine
        model.train()
        fuse: Any = model.fuse_model
        fuse(is_qat=True)
        qconfig_: Any = qconfig(engine, scheme)
        head: Any = model.get_submodule(head_name(model))
        model.qconfig = qconfig_
        head.qconfig = torch.ao.quantization.QConfig(activation=nn.Identity, weight=qconfig_.weight)
        return torch.ao.quantization.prepare_qat(model, inplace=True)


def scheme_of(model: nn.Module) -> str:
    """The scheme a QAT model was prepared with (see SCHEMES)."""
    symmetric = any(isinstance(m, SymmetricObserver) for m in model.modules())
    return "symmetric" if symmetric else "affine"


def fold_bn(model: nn.Module) -> nn.Module:
    """Freeze batch-norm statistics by folding each ConvBn(ReLU)2d into a Conv(ReLU)2d (in
    place), wherever it sits in the model.

    With statistics frozen, conv -> bn is conv(x, w * g) + beta + (b - mean) * g where
    g = gamma / sqrt(var + eps): one conv. The fake quantizers move over; the weight
    quantizer's range is measured afresh on the folded weights. freeze_bn measures the
    statistics first; on its own this folds the running averages as they are.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, nniqat.ConvBnReLU2d):
            model.set_submodule(name, _folded(module, nniqat.ConvReLU2d))
        elif isinstance(module, nniqat.ConvBn2d):
            model.set_submodule(name, _folded(module, nnqat.Conv2d))
    return model


def _folded(module: Any, kind: Any) -> nn.Module:
    """One fused conv + batch norm as a `kind` conv with the folded weights and bias."""
    bn: Any = module.bn  # running statistics are typed optional; fused ones always track
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = module.bias if module.bias is not None else torch.zeros_like(bn.running_mean)
    folded: Any = kind(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=True,
        padding_mode=module.padding_mode,
        qconfig=module.qconfig,
    ).to(module.weight.device)
    with torch.no_grad():
        folded.weight.copy_(module.weight * factor.reshape(-1, 1, 1, 1))
        folded.bias.copy_(bn.bias + (bias - bn.running_mean) * factor)
    folded.weight_fake_quant = module.weight_fake_quant
    folded.activation_post_process = module.activation_post_process
    # prepare_qat fake-quantizes a module's output through a forward hook it registered on
    # that module: without the hook the folded conv's output would go unquantized in QAT.
    for hook in module._forward_hooks.values():
        folded.register_forward_hook(hook)
    observe_afresh(folded.weight_fake_quant, folded.weight)
    folded.train(module.training)
    return folded


class WeightOnlyLinear(nn.Module):
    """A linear layer with int8 weights and float input and output: the classifier head.

    Written here because torch's eager API has no static-weight, float-activation linear.
    The head's logits stay float: quantized logits are clipped to the range the output
    observer saw, and the QAT model (0..127 on x86) and the int8 model (0..255) clip them
    differently, which costs int8 accuracy on noisy sets (benchmarks/README.md has the
    measurements). Computing with the dequantized weights costs little: one multiplication
    per weight and image.
    """

    def __init__(self, qweight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.qweight = qweight
        self.bias_ = bias
        self.dense = qweight.dequantize()

    def weight(self) -> torch.Tensor:
        return self.qweight

    def bias(self) -> torch.Tensor:
        return self.bias_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dense, self.bias_)

    @classmethod
    def from_qat(cls, layer: Any) -> WeightOnlyLinear:
        """Exactly the weights the QAT layer trained with (its fake quantizer's grid)."""
        fake_quant = layer.weight_fake_quant
        with observers_off(fake_quant), torch.no_grad():
            on_grid = fake_quant(layer.weight.detach())
        qweight = quantize_on_grid(
            on_grid, fake_quant.scale, fake_quant.zero_point, fake_quant.ch_axis
        )
        return cls(qweight, layer.bias.detach().clone())


def freeze_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Measure batch norm's statistics exactly over `batches` (the training set), then fold.

    The running averages trail the weights (momentum 0.1) and after few steps are still
    mostly their initial values; folding those would change the function the model learned
    with batch statistics (benchmarks/README.md: what that cost).
    One forward pass without gradients: a hook measures each batch norm's input while the
    running statistics (which the QAT conv scales its weights by) and the observers stay
    as they are.
    """
    norms: list[Any] = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # Per batch norm: images' positions seen, their mean, their sum of squared deviations;
    # batches merge with Chan's parallel formula (in float64: no cancellation).
    moments = {id(bn): torch.zeros(3, bn.num_features, dtype=torch.float64) for bn in norms}

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        n = x.numel() // x.shape[1]
        mean = x.mean((0, 2, 3))  # faster here than torch.var_mean
        squares = (x - mean.reshape(1, -1, 1, 1)).square().sum((0, 2, 3))
        mean, squares = mean.cpu().double(), squares.cpu().double()
        seen, before, before_squares = moments[id(module)]
        total = seen + n
        delta = mean - before
        moments[id(module)] = torch.stack(
            [
                total,
                before + delta * n / total,
                before_squares + squares + delta * delta * seen * n / total,
            ]
        )

    hooks = [bn.register_forward_pre_hook(measure) for bn in norms]
    momenta = [bn.momentum for bn in norms]
    try:
        for bn in norms:
            bn.momentum = 0.0  # running statistics stay put during the pass
        model.train()
        with observers_off(model), quiet(), torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
    with torch.no_grad():
        for bn in norms:
            count, mean, squares = moments[id(bn)]
            if not bool((count > 1).all()):
                continue  # nothing measured: keep the running averages
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(squares / (count - 1))  # unbiased, as batch norm keeps it
    return fold_bn(model)


def observe_afresh(fake_quant: Any, weight: torch.Tensor) -> None:
    """Point a weight fake quantizer at `weight` alone: its moving average (constant 0.01)
    would take hundreds of steps to leave the range of the weights before the fold."""
    with torch.no_grad():
        fake_quant.activation_post_process.reset_min_max_vals()
        enabled = fake_quant.observer_enabled.clone()
        fake_quant.enable_observer()
        fake_quant(weight)
        fake_quant.observer_enabled.copy_(enabled)


def to_int8(model: nn.Module, engine: str) -> nn.Module:
    """The int8 model for inference, converted on the CPU, in place: pass a copy to keep the
    QAT model."""
    with quiet():
        torch.backends.quantized.engine = engine
        model = model.to("cpu").eval()
        name = head_name(model)
        model.set_submodule(name, WeightOnlyLinear.from_qat(model.get_submodule(name)))
        return torch.ao.quantization.convert(model, inplace=True)


@contextlib.contextmanager
def _switched_off(model: nn.Module, flag: str, switch_off: str) -> Iterator[None]:
    """Every fake quantizer's `flag` switched off (by its `switch_off` method), then each
    as it was."""
    fake_quants: list[Any] = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    saved = [getattr(fq, flag).clone() for fq in fake_quants]
    try:
        for fq in fake_quants:
            getattr(fq, switch_off)()
        yield
    finally:
        for fq, was in zip(fake_quants, saved, strict=True):
            getattr(fq, flag).copy_(was)


def observers_off(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Fake quantizers use their ranges without updating them (then as they were)."""
    return _switched_off(model, "observer_enabled", "disable_observer")


def fake_quant_off(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Fake quantizers pass values through unchanged (then as they were)."""
    return _switched_off(model, "fake_quant_enabled", "disable_fake_quant")


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A forward pass without gradients, with the API's notices silenced, that changes
    nothing: a QAT model's fused fake quantizers keep observing in eval mode, so evaluating
    on held-out data would otherwise move its activation ranges (held-out data leaking
    into the model)."""
    with observers_off(model), quiet(), torch.no_grad():
        return model(x)


def quantize_on_grid(
    on_grid: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int = 0
) -> torch.Tensor:
    """qint8 weights from float values already on their grid: one scale, or one per channel."""
    if scales.numel() == 1:
        return torch.quantize_per_tensor(on_grid, float(scales), int(zero_points), torch.qint8)
    return torch.quantize_per_channel(
        on_grid, scales.double(), zero_points.long(), axis, torch.qint8
    )
