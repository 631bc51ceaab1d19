"""The models' sections of the config (core/sections.py lists every table): what edgehook
trains, accepts and serves. Declared here with their defaults, once; pipeline/training/config.py
builds a training run's typed config from TrainingConfig without restating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.settings import setting

MiB = 1024 * 1024
# The model families edgehook builds (pipeline/nn/model.py): declared here because
# the config and the rules' `arch` argument check them without importing torch.
ARCHS = (
    "edgehook-cnn",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "resnet18",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
)


@dataclass(frozen=True)
class ModelsConfig:
    promotion_tolerance: float = setting(
        0.01,
        "how much int8 accuracy a new model may lose and still be promoted",
        minimum=0.0,
        maximum=1.0,
    )
    trusted_keys: tuple[str, ...] = setting(
        (),
        "other signers whose models `deploy` accepts (`ed25519:...`, from `edgehook keys show`)",
    )
    allow_unsigned: bool = setting(
        False, "deploy or fine-tune models without checking signatures (loudly)"
    )
    publish: str = setting(
        "auto",
        "log runs and models to W&B: `auto` (when artifacts come from W&B), `always`, `never`",
        choices=("auto", "always", "never"),
    )
    publish_retries: int = setting(
        5, "transient W&B failures while publishing", minimum=0, maximum=20
    )


@dataclass(frozen=True)
class TrainingConfig:
    arch: str = setting(
        "edgehook-cnn", "the model family; a rule arg `arch` overrides it", choices=ARCHS
    )
    input_size: int = setting(
        0,
        "the model's input side in pixels; `0`: the images' median short side (at most 64; "
        "128 for the torchvision families)",
        minimum=0,
        maximum=512,
    )
    channels: str = setting(
        "auto",
        "`grey`, `rgb`, or `auto` (grey when every image is)",
        choices=("auto", "grey", "rgb"),
    )
    augment: bool = setting(True, "random crops, small rotations, colour jitter while training")
    hflip: bool = setting(
        False, "also mirror training images (only where a mirror image keeps its label)"
    )
    quantization: str = setting(
        "symmetric",
        "int8 activations: `symmetric` (zero point 0 as int8; TensorRT can take it) or `affine` "
        "(torch's default)",
        choices=("symmetric", "affine"),
    )
    time_budget_s: int = setting(
        0, "stop training within this many seconds (`0`: no budget)", minimum=0, maximum=604800
    )
    max_unreadable_share: float = setting(
        0.05,
        "unreadable images are skipped; more than this share of them fails the job",
        minimum=0.0,
        maximum=1.0,
    )
    pretrained_file: Path | None = setting(
        None, "start from these weights: a safetensors file (`edgehook model import-weights`)"
    )
    pretrained_artifact: str | None = setting(
        None, "or from a W&B artifact `entity/project/name:alias` holding one"
    )
    pretrained_sha256: str | None = setting(
        None,
        "pin the weights file by its SHA-256; without a pin an artifact must be signed by a "
        "trusted key",
    )


@dataclass(frozen=True)
class PredictorConfig:
    host: str = setting(
        "127.0.0.1",
        "`edgehook predictor --host`; a non-loopback host needs `--allow-public-bind`",
    )
    port: int = setting(8091, "`edgehook predictor --port`", minimum=1, maximum=65535)
    allow_public_bind: bool = setting(
        False, "allow a non-loopback `host` (anyone who reaches it may classify images)"
    )
    max_body_bytes: int = setting(
        8 * MiB, "413 above this (an image, or a JSON batch)", minimum=1024, maximum=256 * MiB
    )
    max_batch: int = setting(
        64, "images in one JSON batch; 413 above this", minimum=1, maximum=1024
    )
    max_pixels: int = setting(
        10_000_000,
        "400 for an image with more pixels (decompression bombs; a larger JPEG decodes at "
        "a half, quarter or eighth of its sides instead); each decode holds up to 4 bytes "
        "a pixel",
        minimum=1024,
        maximum=400_000_000,
    )
    follow_interval_s: float = setting(
        0.5, "how often the active model is checked for a promotion", minimum=0.05, maximum=60.0
    )
    engine: str = setting(
        "auto",
        "`auto` (the fastest this device has, measured at load), `torch-int8`, `onnxruntime`, "
        "`cuda-fp16`, `cuda-fp32`",
        choices=("auto", "torch-int8", "onnxruntime", "cuda-fp16", "cuda-fp32"),
    )
