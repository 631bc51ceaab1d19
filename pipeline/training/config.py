"""One training run's settings, as one typed object from the config to the child that trains,
stored with the model (as torchvision's references save their args with every checkpoint).

The [training] table's settings keep their names and meanings here, and their defaults are
the declaration's in core/sections.py: nothing is restated. The recipe's own knobs (learning
rate, batch size, ...) are declared here alone. A retrain's worker builds it from the table and
the rule's args (`TrainConfig.from_settings`), writes it once into the job's spec
(`to_dict`), and the child rebuilds it (`from_dict`); `edgehook train` builds it from the
table and its flags. Torch-free: the worker imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import JobError
from core.sections import TrainingConfig

if TYPE_CHECKING:
    from torch import nn

    from pipeline.nn.model import ModelSpec

SETTINGS = TrainingConfig()  # the declared defaults
# The `channels` setting, as the decoder's number of input channels (0: grey when every
# image is).
COLOUR_CHANNELS = {"auto": 0, "grey": 1, "rgb": 3}


@dataclass(frozen=True)
class TrainConfig:
    # The [training] settings, by their names (core/sections.py declares them).
    arch: str = SETTINGS.arch
    input_size: int = SETTINGS.input_size  # 0: the images' median short side
    channels: str = SETTINGS.channels  # the colour mode: auto | grey | rgb
    augment: bool = SETTINGS.augment
    hflip: bool = SETTINGS.hflip  # only where a mirrored image keeps its label
    quantization: str = SETTINGS.quantization  # activations: quantize.SCHEMES
    time_budget_s: float = SETTINGS.time_budget_s  # 0: no budget
    max_unreadable_share: float = SETTINGS.max_unreadable_share
    # A Path in the settings; a string crosses JSON.
    pretrained_file: str | None = (
        None if SETTINGS.pretrained_file is None else str(SETTINGS.pretrained_file)
    )
    pretrained_artifact: str | None = SETTINGS.pretrained_artifact
    pretrained_sha256: str | None = SETTINGS.pretrained_sha256
    # The recipe's knobs; a rule's args and `edgehook train`'s flags set some of them.
    epochs: int = 0  # 0: chosen from the dataset's size (train.auto_epochs)
    lr: float = 0.003  # AdamW's peak learning rate
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    batch_size: int = 64
    seed: int = 0
    holdout: float = 0.2
    stem_width: int = 32  # edgehook-cnn's first stage (ModelSpec.channels)
    patience: int = 0  # fp32 epochs without improvement before stopping; 0: auto
    device: str = "auto"  # auto | cpu | cuda
    dry_run: bool = False  # one batch of each phase: check the plumbing

    @classmethod
    def from_settings(
        cls, settings: TrainingConfig, args: Mapping[str, Any] | None = None, **extra: Any
    ) -> TrainConfig:
        """The [training] table, with a job's args (or the CLI's flags, by the same names)
        winning where given; `extra` sets the knobs no arg names (device, dry_run)."""
        given = {k: v for k, v in (args or {}).items() if v is not None}

        def arg(name: str, default: Any) -> Any:
            return given.get(name, default)

        return cls(
            arch=str(arg("arch", settings.arch)),
            input_size=int(arg("input_size", settings.input_size)),
            channels=settings.channels,
            augment=settings.augment,
            hflip=bool(arg("hflip", settings.hflip)),
            quantization=settings.quantization,
            time_budget_s=float(arg("time_budget", settings.time_budget_s)),
            max_unreadable_share=settings.max_unreadable_share,
            pretrained_file=(
                None if settings.pretrained_file is None else str(settings.pretrained_file)
            ),
            pretrained_artifact=settings.pretrained_artifact,
            pretrained_sha256=settings.pretrained_sha256,
            epochs=int(arg("epochs", cls.epochs)),
            lr=float(arg("lr", cls.lr)),
            batch_size=int(arg("batch_size", cls.batch_size)),
            seed=int(arg("seed", cls.seed)),
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config `to_dict` wrote (into a job's spec); a name it does not know is an error."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise JobError(f"the training config has unknown settings: {', '.join(unknown)}")
        return cls(**data)

    @property
    def in_channels(self) -> int:
        """The decoder's input channels for the colour mode (0: decided by the images)."""
        return COLOUR_CHANNELS[self.channels]

    @property
    def pretrained_path(self) -> Path | None:
        return None if self.pretrained_file is None else Path(self.pretrained_file)


@dataclass(frozen=True)
class Previous:
    """A model to fine-tune: its QAT module (batch norm already folded), its spec, and the
    normalisation it learned with."""

    model: nn.Module
    spec: ModelSpec
    normalisation: dict[str, list[float]]
