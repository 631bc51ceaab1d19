"""`edgehook train`, `infer`, `model` and `keys`: the pipeline without a webhook.

numpy, torch and the pipeline's training code are imported inside the commands that use
them: every `edgehook` command loads this module, `edgehook serve` included."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping
from pathlib import Path

from core.errors import EdgehookError
from core.sections import ARCHS
from edgehook.cli import model
from edgehook.cli.common import Subparsers, add_command, config
from pipeline.models import registry, signing
from pipeline.models.trust import SigningPolicy
from pipeline.training.config import TrainConfig


def register(sub: Subparsers) -> None:
    _register_train(sub)
    _register_infer(sub)
    model.register(sub)
    _register_keys(sub)


def _register_train(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "train",
        "train a quantized model on a local dataset, without a webhook",
        "edgehook train --data ./images --out ./model",
        "edgehook train --data ./cifar-10-batches-py --epochs 5 --dry-run",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="an image-folder tree, CIFAR-10 python batches, or a .npz",
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the model")
    p.add_argument(
        "--arch", choices=ARCHS, help="the model family (default: training.arch, edgehook-cnn)"
    )
    p.add_argument("--input-size", type=int, help="input side in pixels (default: from the images)")
    p.add_argument("--epochs", type=int, help="default: chosen from the dataset's size")
    p.add_argument("--lr", type=float, help="AdamW's peak learning rate (default 0.003)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--hflip", action="store_true", default=None, help="mirror images while training"
    )
    p.add_argument("--time-budget", type=int, help="finish within this many seconds")
    p.add_argument(
        "--pretrained", type=Path, help="start from these weights (import-weights made them)"
    )
    p.add_argument("--pretrained-sha256", help="their SHA-256 (else they must be signed)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="one batch of each phase")
    p.set_defaults(func=run_train)


def _register_infer(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "infer",
        "classify images with the active (or a given) int8 model",
        "edgehook infer photo.png",
        "edgehook infer ./images --top-k 1 --json",
        "edgehook infer --model ./model photo.png",
    )
    p.add_argument("paths", nargs="*", type=Path, help="images or folders of images")
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="measure int8 vs fp32 latency (batch 1) and throughput (batch 64)",
    )
    p.add_argument("--model", type=Path, help="a model directory (default: the active model)")
    p.add_argument("--top-k", type=top_k, default=3, help=f"1 to {MAX_TOP_K} (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_infer)


def _register_keys(sub: Subparsers) -> None:
    keys = add_command(
        sub, "keys", "this device's model signing key", "edgehook keys init", "edgehook keys show"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add_command(keys_sub, "init", "make the key (refuses to overwrite one)", "edgehook keys init")
    add_command(keys_sub, "show", "print the public key and its id", "edgehook keys show")
    keys.set_defaults(func=run_keys)


def run_train(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from pipeline.recipe import make_model  # torch: every other command stays light

    data = _dataset_path(args.data)
    flags = {
        "arch": args.arch,
        "input_size": args.input_size,
        "epochs": args.epochs,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "hflip": args.hflip,
        "time_budget": args.time_budget,
    }
    train_config = TrainConfig.from_settings(
        loaded.training, flags, device=args.device, dry_run=args.dry_run
    )
    pretrained = None
    weights = args.pretrained or loaded.training.pretrained_file
    if weights is not None:
        from pipeline.training.pretrained import load_pretrained  # torch

        trusted = SigningPolicy.from_config(loaded).trusted_keys
        pin = args.pretrained_sha256 or loaded.training.pretrained_sha256
        pretrained = load_pretrained(Path(weights), train_config.arch, pin, list(trusted))
    with tempfile.TemporaryDirectory(prefix="edgehook-train-") as workdir:
        made = make_model(
            data,
            args.out,
            train_config,
            Path(workdir),
            sources=[str(args.data)],
            pretrained=pretrained,
        )
    signed = "unsigned (no secrets.model_signing_key_file configured)"
    if loaded.secrets.model_signing_key_file is not None:
        key = signing.load_private(loaded.secrets.model_signing_key_file)
        signed = f"signed by {signing.sign(args.out, key).key_id}"
    print(
        f"wrote {args.out} (int8 accuracy {made.meta.int8_accuracy:.3f}, {signed}); "
        f"inference check: {made.agree}/{made.samples} agree"
    )
    return 0


def _dataset_path(path: Path) -> Path:
    """--data as given: a folder, or one .npz file (README and --help accept both)."""
    if not path.exists():
        raise EdgehookError(f"--data {path} does not exist")
    if not path.is_dir() and path.suffix.lower() != ".npz":
        raise EdgehookError(f"--data {path} is a file but not a .npz; give a folder or a .npz")
    return path


MAX_TOP_K = 100


def top_k(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number from 1 to {MAX_TOP_K}")
    return int(text)


def run_infer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from edgehook import infer  # numpy and torch: the commands that do not infer never load them

    model_dir = args.model or registry.active(loaded.models_dir)
    if model_dir is None:
        raise EdgehookError("no active model: train one (edgehook train) or pass --model DIR")
    if args.benchmark:
        return infer.benchmark(Path(model_dir), args.json)
    return infer.classify(Path(model_dir), args.paths, args.top_k, args.json)


def run_keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    path = loaded.secrets.model_signing_key_file or loaded.base_dir / "secrets" / (
        "model_signing_key"
    )
    if args.keys_command == "init":
        if path.exists():
            raise EdgehookError(
                f"{path} exists; refusing to overwrite a signing key (move it "
                "away first if you mean to rotate it)"
            )
        public = signing.generate(path)
        print(f"wrote {path} (mode 0600)")
        if loaded.secrets.model_signing_key_file is None:
            print(f'add to the config: [secrets] model_signing_key_file = "{path}"')
    else:
        public = signing.public_text(signing.load_private(path).public_key())
    print(f"{public}  (key id {signing.key_id(public)})")
    return 0
