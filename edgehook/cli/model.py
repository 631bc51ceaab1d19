"""`edgehook model`: the device's models: list, roll back, verify, import weights, install,
export. Every command that takes a model in (install, export) asks the one signing policy
(pipeline/models/trust.py, as deploy does) and loads the model in a child process with a
time and memory limit before it signs, registers or activates anything.

torch loads inside the two commands that need it (import-weights, export): every `edgehook`
command loads this module, `edgehook serve` included."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from core.config import Config, is_artifact_name
from core.credentials import load_audit_key
from core.errors import EdgehookError, JobError
from core.names import printable
from core.sections import ARCHS
from edgehook.cli.common import Subparsers, add_command, config, operator_audit, shell_operator
from pipeline import operator
from pipeline.artifacts import fetch
from pipeline.models import registry, signing
from pipeline.models.loadcheck import check_loads
from pipeline.models.modelfile import METADATA, copy_model, sha256
from pipeline.models.signing import Verified
from pipeline.models.trust import SigningPolicy


def register(sub: Subparsers) -> None:
    model = add_command(
        sub,
        "model",
        "the device's models: list, install, export, verify, roll back",
        "edgehook model list",
        "edgehook model rollback",
    )
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    add_command(actions, "list", "models, the active one starred", "edgehook model list")
    add_command(
        actions, "rollback", "make the previous model active again", "edgehook model rollback"
    ).set_defaults(func=run_rollback)
    actions.choices["list"].set_defaults(func=run_list)
    _register_verify(actions)
    _register_import(actions)
    _register_install(actions)
    _register_export(actions)


def _register_verify(actions: Subparsers) -> None:
    verify = add_command(
        actions,
        "verify",
        "check a model's signature: a directory, a signed file (FILE.sig beside it), or an "
        "artifact name (configured source)",
        "edgehook model verify ./model",
        "edgehook model verify model.onnx",
        "edgehook model verify team/proj/shapes-int8:v3",
    )
    verify.add_argument("path", type=Path)
    verify.set_defaults(func=run_verify)


def _register_import(actions: Subparsers) -> None:
    imported = add_command(
        actions,
        "import-weights",
        "convert torchvision's published weights (.pth) to safetensors, on a trusted machine",
        "edgehook model import-weights resnet18-f37072fd.pth --arch resnet18 "
        "--out resnet18.safetensors",
    )
    imported.add_argument("source", type=Path, help="the .pth file torchvision publishes")
    imported.add_argument("--arch", required=True, choices=ARCHS[1:])
    imported.add_argument("--out", type=Path, required=True)
    imported.set_defaults(func=run_import_weights)


def _register_install(actions: Subparsers) -> None:
    install = add_command(
        actions,
        "install",
        "register a signed model directory and make it active (the predictor follows)",
        "edgehook model install ./model",
        "edgehook model install ./model --no-activate",
    )
    install.add_argument("path", type=Path, help="a model directory (model.safetensors, ...)")
    install.add_argument(
        "--no-activate", action="store_true", help="register it only; the active model stays"
    )
    install.set_defaults(func=run_install)


def _register_export(actions: Subparsers) -> None:
    export = add_command(
        actions,
        "export",
        "write a model as ONNX (int8 QDQ), signed when this device signs",
        "edgehook model export edgehook-data/models/job3-attempt1 --format onnx --out m.onnx",
        "edgehook model export ./model --format onnx --target tensorrt --out m-trt.onnx",
    )
    export.add_argument("path", type=Path, help="a model directory")
    export.add_argument("--format", choices=["onnx"], required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--fp32", action="store_true", help="the float network, no QDQ")
    export.add_argument(
        "--target",
        choices=["onnxruntime", "tensorrt"],
        default="onnxruntime",
        help="tensorrt: symmetric Q/DQ, every zero point an int8 0 (docs/tensorrt.md)",
    )
    export.set_defaults(func=run_export)


def run_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    current = registry.state(loaded.models_dir)
    names = [*current["history"], current["active"]] if current["active"] else []
    if not names:
        print("no models yet")
    for name in names:
        marker = "*" if name == current["active"] else " "
        meta = registry.read_metadata(loaded.models_dir / name)
        print(
            f"{marker} {printable(name)}  int8 accuracy {meta.int8_accuracy:.3f}  "
            f"from {printable(', '.join(meta.sources))}"
        )
    return 0


def run_rollback(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    name = operator.rollback(loaded, load_audit_key(loaded, env), shell_operator())
    print(f"active model: {printable(name)}")
    return 0


def run_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    trusted = SigningPolicy.from_config(loaded).trusted_keys
    path: Path = args.path
    try:
        if path.exists() and not path.is_dir():  # an exported file (ONNX) or weights
            signer = signing.verify_file(path, trusted)
        elif path.exists():
            signer = signing.verify(path, trusted)
        elif is_artifact_name(str(path)):
            signer = _verify_artifact(loaded, str(path), trusted)
        else:
            raise EdgehookError(
                f"{path} does not exist (and is not an artifact name entity/project/name:alias)"
            )
    except JobError as exc:
        print(f"NOT VERIFIED: {exc}")
        return 1
    print(f"verified: signed by trusted key {signer.key_id}")
    return 0


def _verify_artifact(loaded: Config, name: str, trusted: tuple[str, ...]) -> Verified:
    with tempfile.TemporaryDirectory(prefix="edgehook-verify-") as tmp:
        got = fetch(
            loaded.artifacts.source,
            loaded.artifacts.local_root,
            name,
            Path(tmp) / "model",
            loaded.artifacts.download_timeout_s,
        )
        return signing.verify(got.root, trusted)


def run_import_weights(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    from pipeline.training.pretrained import import_weights  # torch

    digest = import_weights(args.source, args.arch, args.out)
    print(f"wrote {args.out} ({args.arch}); pin it in the config:")
    print(f'  [training]\n  pretrained_file = "{args.out}"\n  pretrained_sha256 = "{digest}"')
    if loaded.secrets.model_signing_key_file is not None:
        key = signing.load_private(loaded.secrets.model_signing_key_file)
        signer = signing.sign_file(args.out, key)
        print(f"or ship it with {args.out.name}.sig (signed by {signer.key_id})")
    return 0


@contextmanager
def accepted(loaded: Config, path: Path) -> Iterator[tuple[Path, str]]:
    """A private copy of the model at `path` that the signing policy accepts and that loads
    in a child process within its limits, and its signer. The copy is what is checked and
    used, so the source changing meanwhile cannot slip anything past the checks."""
    policy = SigningPolicy.from_config(loaded)
    with tempfile.TemporaryDirectory(prefix="edgehook-model-") as tmp:
        copy = Path(tmp) / "model"
        copy_model(path, copy)
        signer = policy.accept(copy)
        check_loads(copy)
        yield copy, signer


def run_install(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Verify (the signing policy, as deploy asks it), load in a child, register, and make
    active unless told not to; audited in the operator chain. The same model (same weights
    and metadata) registered before is activated where it is."""
    loaded = config(args, env)
    activate = not args.no_activate
    with accepted(loaded, args.path) as (copy, signer):
        meta = registry.read_metadata(copy)
        # Weights and metadata both name the entry: other metadata over the same weights
        # (other classes, other normalisation) is another model, never the old one again.
        name = f"installed-{meta.weights_sha256[:12]}-{sha256(copy / METADATA)[:8]}"
        decision = registry.install(loaded.models_dir, copy, name, activate=activate)
    operator_audit(
        loaded,
        env,
        action="model_install",
        model=name,
        source=str(args.path),
        signer=signer,
        activated=activate,
    )
    print(f"{decision.reason}: {name}, signed by {signer}")
    return 0


def run_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Export only a model the signing policy accepts and that loads in a child: the
    device's signature on the ONNX file vouches for what went in."""
    loaded = config(args, env)
    from pipeline.models.onnxexport import export  # torch and onnx

    with accepted(loaded, args.path) as (copy, signer):
        props = export(copy, args.out, fp32=args.fp32, target=args.target)
    line = f"wrote {args.out}: {props['edgehook.quantization']} (source signed by {signer})"
    if loaded.secrets.model_signing_key_file is not None:
        key = signing.load_private(loaded.secrets.model_signing_key_file)
        line += f"; signed by {signing.sign_file(args.out, key).key_id} ({args.out.name}.sig)"
    else:
        line += "; unsigned (no secrets.model_signing_key_file configured)"
    print(line)
    return 0
