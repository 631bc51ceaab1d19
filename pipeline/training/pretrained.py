"""Pretrained weights: converted once on a trusted machine, checked before every use.

`edgehook model import-weights` turns a published torchvision weights file (a pickle) into
safetensors: loaded with `torch.load(weights_only=True)`, which builds tensors and nothing
else, checked to fit the architecture, and written with the architecture in the header.
A job only ever reads safetensors, and only a file pinned by SHA-256 in the config
(`training.pretrained_sha256`) or signed by a trusted key (`FILE.sig`, which import-weights
writes when this device has a signing key).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import JobError
from pipeline.models.modelfile import sha256
from pipeline.models.signing import verify_file
from pipeline.nn.model import TORCHVISION, ModelSpec, build

KIND = "edgehook-weights-1"


def import_weights(source: Path, arch: str, out: Path) -> str:
    """Convert a torchvision weights file (.pth) for `arch` to safetensors at `out`; returns
    its SHA-256 (the pin to put in the config)."""
    from safetensors.torch import save_file

    if arch not in TORCHVISION:
        raise JobError(f"import-weights converts torchvision weights; {arch} is edgehook's own")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # anything that is not a plain tensor file
        raise JobError(
            f"{source} is not a weights file torch can load without running code ({exc})"
        ) from exc
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise JobError(f"{source} does not hold a state dict of tensors")
    build(ModelSpec(arch, 3, 224, 224, 2), weights=state)  # refuses a file for another arch
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out), metadata={"kind": KIND, "arch": arch})
    return sha256(out)


def load_pretrained(
    path: Path, arch: str, pin: str | None, trusted: list[str]
) -> dict[str, torch.Tensor]:
    """The tensors of a checked weights file for `arch`, or JobError saying why not."""
    from safetensors import SafetensorError, safe_open

    if pin is not None:
        if sha256(path) != pin:
            raise JobError(
                f"the pretrained weights {path.name} do not match training.pretrained_sha256"
            )
    else:
        verify_file(path, trusted)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise JobError(f"{path.name} is not a safetensors file ({exc})") from exc
    if header.get("kind") != KIND or header.get("arch") != arch:
        raise JobError(
            f"{path.name} holds weights for {header.get('arch')!r}, not {arch!r} "
            "(convert them with `edgehook model import-weights`)"
        )
    return tensors
