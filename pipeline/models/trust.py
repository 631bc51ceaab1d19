"""Which models this device accepts: the one trust decision, asked everywhere a model is
taken in (deploy, fine-tuning, install, export, the predictor, load_active).

A `SigningPolicy` is built once from the config (`from_config`): this device's own public
key and `models.trusted_keys`, and whether `models.allow_unsigned` waives the check. Job
children get it through job.json (JobSpec.policy()); nobody re-derives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from pipeline.models import signing
from pipeline.models.modelfile import read_metadata

UNCHECKED = "unchecked (models.allow_unsigned = true)"


@dataclass(frozen=True)
class SigningPolicy:
    trusted_keys: tuple[str, ...]
    allow_unsigned: bool = False

    @classmethod
    def from_config(cls, config: Config) -> SigningPolicy:
        keys = signing.trusted_keys(
            config.secrets.model_signing_key_file, config.models.trusted_keys
        )
        return cls(tuple(keys), config.models.allow_unsigned)

    def accept(self, model_dir: Path) -> str:
        """Who signed the model in `model_dir` (a trusted key's id), or UNCHECKED where
        unsigned models are allowed; JobError when the model is refused."""
        if self.allow_unsigned:
            read_metadata(model_dir)
            return UNCHECKED
        return signing.verify(model_dir, self.trusted_keys).key_id
