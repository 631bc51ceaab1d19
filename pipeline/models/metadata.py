"""model.json, typed: what a model file says about itself. One writer (modelfile.save) and
one reader (modelfile.read_metadata); everything else uses the fields.

Reading checks each field's type and names the first one that is wrong. Keys this version
does not know are kept, untouched, in `extra` (a model made by a newer edgehook).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from core.errors import JobError
from core.names import label_problem

MAX_CLASSES = 1000
# The spec's whole numbers, each within what any architecture could take (training/model.py
# checks each family's own bounds when it builds one).
SPEC_INTS = {
    "in_channels": (1, 3),
    "height": (1, 4096),
    "width": (1, 4096),
    "num_classes": (2, MAX_CLASSES),
    "channels": (1, 4096),
}


@dataclass(frozen=True)
class ModelMeta:
    format: int
    spec: dict[str, Any]  # pipeline.nn.model.ModelSpec, checked by ModelSpec.from_dict on load
    classes: list[str]
    normalisation: dict[str, list[float]]
    engine: str  # the quantized engine it was trained for (x86, qnnpack, ...)
    metrics: dict[str, Any]  # int8_accuracy, qat_accuracy, confusion, epochs, ...
    weights_sha256: str
    train_config: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # artifact versions it was made from
    torch: str = ""
    created_at: float = 0.0
    device: str = ""  # the device that trained it
    latency: dict[str, float] = field(default_factory=dict)
    job_id: int | None = None
    dataset_layout: str | None = None
    origin: str | None = None  # "from scratch" or "fine-tuned from ..."
    # activations: "symmetric" (zero point 128) or "affine"; files without it were affine
    quantization: str = "affine"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def int8_accuracy(self) -> float:
        value = self.metrics.get("int8_accuracy")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise JobError("model metadata has no int8 accuracy")
        return float(value)

    def to_json(self) -> str:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        # Compact: 1,000 classes' confusion matrix indented would be one line per count.
        return json.dumps({**values, **self.extra}, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Any) -> ModelMeta:
        if not isinstance(data, dict):
            raise JobError("model.json is not a JSON object")
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        for name in known:
            if name in data:
                values[name] = _checked(name, data[name])
        missing = [n for n, f in known.items() if n not in values and _required(f)]
        if missing:
            raise JobError(f"model.json lacks {', '.join(missing)}")
        extra = {k: v for k, v in data.items() if k not in known}
        _check_spec(values["spec"])
        _check_normalisation(values["normalisation"], values["spec"]["in_channels"])
        if len(values["classes"]) > MAX_CLASSES:
            raise JobError(f"model.json lists more than {MAX_CLASSES} classes")
        for index, name in enumerate(values["classes"]):
            problem = label_problem(name)
            if problem is not None:
                raise JobError(f"model.json: class {index} {problem}")
        return cls(**values, extra=extra)


_TYPES: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "spec": (dict,),
    "classes": (list,),
    "normalisation": (dict,),
    "engine": (str,),
    "metrics": (dict,),
    "weights_sha256": (str,),
    "train_config": (dict,),
    "sources": (list,),
    "torch": (str,),
    "created_at": (int, float),
    "device": (str, type(None)),
    "latency": (dict,),
    "job_id": (int, type(None)),
    "dataset_layout": (str, type(None)),
    "origin": (str, type(None)),
    "quantization": (str,),
}


def _checked(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, _TYPES[name]):
        raise JobError(f"model.json: {name} has the wrong type")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise JobError(f"model.json: {name} must list strings")
    return value


def _check_spec(spec: dict[str, Any]) -> None:
    if not isinstance(spec.get("arch"), str):
        raise JobError("model.json: spec.arch is not a name")
    for key, (low, high) in SPEC_INTS.items():
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise JobError(f"model.json: spec.{key} is not a whole number from {low} to {high}")


def _check_normalisation(norm: dict[str, Any], channels: int) -> None:
    for key in ("mean", "std"):
        values = norm.get(key)
        if (
            not isinstance(values, list)
            or len(values) != channels
            or not all(_number(v) and abs(v) <= 1e3 for v in values)
            or (key == "std" and not all(v > 0 for v in values))
        ):
            raise JobError(
                f"model.json: normalisation.{key} is not {channels} finite number(s)"
                + (" above 0" if key == "std" else "")
            )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _required(f: Any) -> bool:
    return bool(f.default is MISSING and f.default_factory is MISSING)
