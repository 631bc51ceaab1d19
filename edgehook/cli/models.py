"""`edgehook train`, `infer`, `model` and `keys`: the pipeline without a webhook.

numpy, torch and the pipeline's training code are imported inside the commands: every
`edgehook` command loads this module, `edgehook serve` included."""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import EdgehookError, JobError
from core.sections import ARCHS
from edgehook.cli.common import Subparsers, add_command, config, operator_audit
from pipeline.models import registry


def register(sub: Subparsers) -> None:
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
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_infer)

    model = add_command(
        sub,
        "model",
        "the device's models: list, install, export, verify, roll back",
        "edgehook model list",
        "edgehook model rollback",
    )
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    add_command(model_sub, "list", "models, the active one starred", "edgehook model list")
    add_command(
        model_sub, "rollback", "make the previous model active again", "edgehook model rollback"
    )
    verify = add_command(
        model_sub,
        "verify",
        "check a model's signature: a directory, a signed file (FILE.sig beside it), or an "
        "artifact name (configured source)",
        "edgehook model verify ./model",
        "edgehook model verify model.onnx",
        "edgehook model verify team/proj/shapes-int8:v3",
    )
    verify.add_argument("path", type=Path)
    imported = add_command(
        model_sub,
        "import-weights",
        "convert torchvision's published weights (.pth) to safetensors, on a trusted machine",
        "edgehook model import-weights resnet18-f37072fd.pth --arch resnet18 "
        "--out resnet18.safetensors",
    )
    install = add_command(
        model_sub,
        "install",
        "register a signed model directory and make it active (the predictor follows)",
        "edgehook model install ./model",
        "edgehook model install ./model --no-activate",
    )
    install.add_argument("path", type=Path, help="a model directory (model.safetensors, ...)")
    install.add_argument(
        "--no-activate", action="store_true", help="register it only; the active model stays"
    )
    export = add_command(
        model_sub,
        "export",
        "write a model as ONNX (int8 QDQ; --fp32 for TensorRT), signed when this device signs",
        "edgehook model export edgehook-data/models/job3-attempt1 --format onnx --out m.onnx",
    )
    export.add_argument("path", type=Path, help="a model directory")
    export.add_argument("--format", choices=["onnx"], required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument(
        "--fp32", action="store_true", help="the float network, no QDQ (see README: TensorRT)"
    )
    export.add_argument(
        "--target",
        choices=["onnxruntime", "tensorrt"],
        default="onnxruntime",
        help="tensorrt: symmetric Q/DQ, every zero point an int8 0 (docs/tensorrt.md)",
    )
    imported.add_argument("source", type=Path, help="the .pth file torchvision publishes")
    imported.add_argument("--arch", required=True, choices=ARCHS[1:])
    imported.add_argument("--out", type=Path, required=True)
    model.set_defaults(func=run_model)

    keys = add_command(
        sub, "keys", "this device's model signing key", "edgehook keys init", "edgehook keys show"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add_command(keys_sub, "init", "make the key (refuses to overwrite one)", "edgehook keys init")
    add_command(keys_sub, "show", "print the public key and its id", "edgehook keys show")
    keys.set_defaults(func=run_keys)


def run_train(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from pipeline.models.inference import check_in_fresh_process, predict
    from pipeline.models.modelfile import save
    from pipeline.training.train import configure, load_data, train

    training = dataclasses.asdict(loaded.training)
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
    train_config = configure(training, flags, device=args.device, dry_run=args.dry_run)
    pretrained = None
    weights = args.pretrained or loaded.training.pretrained_file
    if weights is not None:
        from pipeline.models import signing
        from pipeline.training.pretrained import load_pretrained

        trusted = signing.trusted_keys(
            loaded.secrets.model_signing_key_file, loaded.models.trusted_keys
        )
        pin = args.pretrained_sha256 or loaded.training.pretrained_sha256
        pretrained = load_pretrained(Path(weights), train_config.arch, pin, trusted)
    with tempfile.TemporaryDirectory(prefix="edgehook-train-") as workdir:
        dataset = load_data(args.data, train_config, training, Path(workdir))
        trained = train(dataset, train_config, pretrained=pretrained)
    meta = save(
        args.out, trained, sources=[str(args.data)], extra={"dataset_layout": dataset.layout}
    )
    expected = predict(trained.int8, trained.held_out, trained.normalisation).argmax(1)
    check = check_in_fresh_process(args.out, trained.held_out, expected)
    signed = "unsigned (no secrets.model_signing_key_file configured)"
    if loaded.secrets.model_signing_key_file is not None:
        from pipeline.models import signing

        key = signing.load_private(loaded.secrets.model_signing_key_file)
        signed = f"signed by {signing.sign(args.out, key).key_id}"
    print(
        f"wrote {args.out} (int8 accuracy {meta.int8_accuracy:.3f}, {signed}); "
        f"inference check: {check['agree']}/{check['samples']} agree"
    )
    return 0


def run_infer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from pipeline.models.inference import predict
    from pipeline.models.modelfile import load_int8
    from pipeline.training.datasets import IMAGE_SUFFIXES

    model_dir = args.model or registry.active(loaded.models_dir)
    if model_dir is None:
        raise EdgehookError("no active model: train one (edgehook train) or pass --model DIR")
    if args.benchmark:
        return _benchmark(Path(model_dir), args.json)
    paths = [
        p
        for target in args.paths
        for p in (
            sorted(q for q in target.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            if target.is_dir()
            else [target]
        )
    ]
    if not paths:
        raise EdgehookError("no images given")
    model, meta = load_int8(Path(model_dir))
    import numpy as np

    images = np.stack([_read(p, meta.spec) for p in paths])
    probabilities = predict(model, images, meta.normalisation)
    classes = meta.classes
    for path, row in zip(paths, probabilities, strict=True):
        top = row.argsort()[::-1][: args.top_k]
        ranked = ", ".join(f"{classes[i]} {row[i]:.3f}" for i in top)
        print(
            json.dumps(
                {"image": str(path), "top": [[classes[i], round(float(row[i]), 4)] for i in top]}
            )
            if args.json
            else f"{path}: {ranked}"
        )
    return 0


def _benchmark(model_dir: Path, as_json: bool) -> int:
    from pipeline.models.inference import speed
    from pipeline.models.modelfile import load_int8

    model, meta = load_int8(model_dir)
    figures = speed(model, meta.spec, repeats=200)
    if as_json:
        print(json.dumps(figures))
        return 0
    print(f"model {model_dir.name} on this machine (fp32: the same architecture)")
    print(
        f"  batch 1 latency   int8 {figures['int8_batch1_ms']:.3f} ms   "
        f"fp32 {figures['fp32_batch1_ms']:.3f} ms"
    )
    print(
        f"  batch 64 images/s int8 {figures['int8_batch64_per_s']:.0f}   "
        f"fp32 {figures['fp32_batch64_per_s']:.0f}   "
        f"({figures['int8_batch64_per_s'] / figures['fp32_batch64_per_s']:.1f}x)"
    )
    return 0


def _read(path: Path, spec: dict[str, int]) -> Any:
    from pipeline.nn.images import decode

    try:
        pixels = decode(path.read_bytes(), spec["height"], spec["in_channels"])
    except (OSError, ValueError) as exc:
        raise JobError(f"{path} is not a readable image") from exc
    return pixels.astype("float32") / 255.0


def run_keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from pipeline.models import signing

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


def run_model(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    if args.model_command == "verify":
        from pipeline.models import signing

        trusted = signing.trusted_keys(
            loaded.secrets.model_signing_key_file, loaded.models.trusted_keys
        )
        try:
            if args.path.is_file():  # an exported file (ONNX) or weights, with FILE.sig
                signer = signing.verify_file(args.path, trusted)
            elif args.path.exists():
                signer = signing.verify(args.path, trusted)
            else:
                # Not a directory here: an artifact name (entity/project/name:version).
                from pipeline.artifacts import fetch

                with tempfile.TemporaryDirectory(prefix="edgehook-verify-") as tmp:
                    got = fetch(
                        loaded.artifacts.source,
                        loaded.artifacts.local_root,
                        str(args.path),
                        Path(tmp) / "model",
                        loaded.artifacts.download_timeout_s,
                    )
                    signer = signing.verify(got.root, trusted)
        except JobError as exc:
            print(f"NOT VERIFIED: {exc}")
            return 1
        print(f"verified: signed by trusted key {signer.key_id}")
        return 0
    if args.model_command == "import-weights":
        from pipeline.models import signing
        from pipeline.training.pretrained import import_weights

        digest = import_weights(args.source, args.arch, args.out)
        print(f"wrote {args.out} ({args.arch}); pin it in the config:")
        print(f'  [training]\n  pretrained_file = "{args.out}"\n  pretrained_sha256 = "{digest}"')
        if loaded.secrets.model_signing_key_file is not None:
            key = signing.load_private(loaded.secrets.model_signing_key_file)
            signer = signing.sign_file(args.out, key)
            print(f"or ship it with {args.out.name}.sig (signed by {signer.key_id})")
        return 0
    if args.model_command == "install":
        return _install(loaded, env, args.path, activate=not args.no_activate)
    if args.model_command == "export":
        return _export(loaded, args.path, args.out, args.fp32, args.target)
    if args.model_command == "rollback":
        name = registry.rollback(loaded.models_dir)
        operator_audit(loaded, env, action="model_rollback", model=name)
        print(f"active model: {name}")
        return 0
    current = registry.state(loaded.models_dir)
    names = [*current["history"], current["active"]] if current["active"] else []
    if not names:
        print("no models yet")
    for name in names:
        marker = "*" if name == current["active"] else " "
        meta = registry.read_metadata(loaded.models_dir / name)
        print(
            f"{marker} {name}  int8 accuracy {meta.int8_accuracy:.3f}  "
            f"from {', '.join(meta.sources)}"
        )
    return 0


def _install(loaded: Any, env: Mapping[str, str], path: Path, activate: bool) -> int:
    """Verify (the trusted keys, as deploy does), register, and activate unless told not to;
    audited in the operator chain. A model already registered under the same weights is
    activated where it is."""
    from pipeline.models import signing

    if loaded.models.allow_unsigned:
        meta = registry.read_metadata(path)
        signer = "unchecked (models.allow_unsigned = true)"
    else:
        trusted = signing.trusted_keys(
            loaded.secrets.model_signing_key_file, loaded.models.trusted_keys
        )
        signer = signing.verify(path, trusted).key_id
        meta = registry.read_metadata(path)
    name = f"installed-{meta.weights_sha256[:12]}"
    decision = registry.install(loaded.models_dir, path, name, activate=activate)
    operator_audit(
        loaded,
        env,
        action="model_install",
        model=name,
        source=str(path),
        signer=signer,
        activated=activate,
    )
    print(f"{decision.reason}: {name}, signed by {signer}")
    return 0


def _export(loaded: Any, path: Path, out: Path, fp32: bool, target: str) -> int:
    from pipeline.models import signing
    from pipeline.models.onnxexport import export

    props = export(path, out, fp32=fp32, target=target)
    line = f"wrote {out}: {props['edgehook.quantization']}"
    if loaded.secrets.model_signing_key_file is not None:
        key = signing.load_private(loaded.secrets.model_signing_key_file)
        line += f"; signed by {signing.sign_file(out, key).key_id} ({out.name}.sig)"
    else:
        line += "; unsigned (no secrets.model_signing_key_file configured)"
    print(line)
    return 0
