"""The child process for built-in actions: `python -m pipeline.runjob job.json`.

Runs in the job's own directory with only the environment its rule allows. Reads job.json
(pipeline/jobs.JobSpec), writes result.json (pipeline/jobs.JobResult) for the worker, which
owns the outcome. Exit codes: see core/errors.py.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import EXIT_FAILED, EXIT_TRANSIENT, JobError, StalledError, TransientError
from pipeline.artifacts import Fetched
from pipeline.artifacts import fetch as fetch_artifact
from pipeline.jobs import JobResult, JobSpec
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import METADATA, load_for_finetune, load_int8, read_metadata
from pipeline.models.trust import UNCHECKED
from pipeline.training.config import Previous, TrainConfig


def fetch(spec: JobSpec, job_dir: Path) -> Fetched:
    version = spec.event.get("version_string") or _version_string(spec.event)
    if version is None:
        raise JobError("the event names no artifact version")
    return _fetch(spec, version, job_dir / "artifact")


def _fetch(spec: JobSpec, version: str, dest: Path) -> Fetched:
    artifacts = spec.artifacts
    return fetch_artifact(
        artifacts.source, artifacts.local_root, version, dest, artifacts.download_timeout_s
    )


def download(spec: JobSpec, job_dir: Path) -> JobResult:
    got = fetch(spec, job_dir)
    return JobResult(
        summary=f"downloaded {got.version_string}: {got.files} files, {got.bytes} bytes, "
        "digests verified"
    )


def retrain(spec: JobSpec, job_dir: Path) -> JobResult:
    """Fetch the dataset, train with QAT, export, and check the export in a fresh process.
    When the event is about a model artifact, fine-tune that model (only if a trusted key
    signed it) on the dataset its metadata names. The worker signs and promotes."""
    from pipeline.recipe import make_model  # torch: a download or publish job never loads it

    got = fetch(spec, job_dir)
    previous, sources, origin = None, [got.version_string], "from scratch"
    data_root = got.root
    if (got.root / METADATA).exists():
        previous, dataset_version = _previous_model(spec, got.root)
        data = _fetch(spec, dataset_version, job_dir / "dataset")
        data_root, sources = data.root, [data.version_string, got.version_string]
        origin = f"fine-tuned from {got.version_string}"
    config = TrainConfig.from_dict(spec.training)
    pretrained = None
    if previous is not None:  # the previous model decides the architecture and input
        config = replace(
            config,
            arch=previous.spec.arch,
            input_size=previous.spec.height,
            channels="grey" if previous.spec.in_channels == 1 else "rgb",
        )
    else:
        pretrained = _pretrained(spec, job_dir, config)
    model_dir = job_dir / "model"
    made = make_model(
        data_root,
        model_dir,
        config,
        job_dir,
        sources=sources,
        log=lambda line: print(line, flush=True),
        start_from=previous,
        pretrained=pretrained,
        device=spec.device_id,
        extra={"job_id": spec.job_id, "origin": origin},
        timing=True,
    )
    print(f"inference check: {made.agree}/{made.samples} predictions agree", flush=True)
    metrics = made.meta.metrics
    return JobResult(
        summary=f"{origin}, trained on {sources[0]} ({made.layout}, "
        f"{made.images} images): int8 accuracy {metrics['int8_accuracy']:.3f}, "
        f"QAT {metrics['qat_accuracy']:.3f}",
        model=str(model_dir),
    )


def _pretrained(spec: JobSpec, job_dir: Path, config: TrainConfig) -> Any:
    """The configured pretrained weights (a file, or an artifact holding one), checked
    (pinned or signed by a trusted key) before a tensor is read; None when none is set."""
    from pipeline.training.pretrained import load_pretrained  # torch, as in retrain

    artifact, file = config.pretrained_artifact, config.pretrained_file
    if artifact:
        got = _fetch(spec, str(artifact), job_dir / "pretrained")
        files = sorted(got.root.rglob("*.safetensors"))
        if len(files) != 1:
            raise JobError(f"{artifact} must hold exactly one .safetensors file")
        path = files[0]
    elif file:
        path = Path(str(file))
    else:
        return None
    print(f"starting from pretrained weights {path.name}", flush=True)
    return load_pretrained(path, config.arch, config.pretrained_sha256, spec.trusted_keys)


def _previous_model(spec: JobSpec, root: Path) -> tuple[Any, str]:
    """The model to fine-tune (signature checked before anything is loaded) and the dataset
    version it was trained on."""
    _accept(spec, root)
    dataset = next((s for s in read_metadata(root).sources if ":" in s), None)
    if dataset is None:
        raise JobError("the model's metadata names no dataset to fine-tune on")
    model, meta, model_spec = load_for_finetune(root)
    return Previous(model, model_spec, meta.normalisation), dataset


def deploy(spec: JobSpec, job_dir: Path) -> JobResult:
    """Fetch a model artifact; accept it only if a trusted key signed it (checked before a
    byte of it is loaded); rebuild the int8 model from it as a smoke test. The worker checks
    the signature again and makes the model active."""
    import numpy as np  # numpy and torch: a download or publish job never loads them

    from pipeline.models.inference import predict  # torch, as numpy above

    got = fetch(spec, job_dir)
    signer = _accept(spec, got.root)
    model, meta = load_int8(got.root)
    shape = meta.spec
    probe = np.zeros((1, shape["in_channels"], shape["height"], shape["width"]), np.float32)
    predict(model, probe, meta.normalisation)
    return JobResult(
        summary=f"verified {got.version_string} (signed by {signer}) and rebuilt it as int8",
        deploy=str(got.root),
    )


def _accept(spec: JobSpec, model_dir: Path) -> str:
    """The worker's signing policy asked before a byte of the model is loaded."""
    signer = spec.policy().accept(model_dir)
    if signer == UNCHECKED:
        print("WARNING: models.allow_unsigned = true: the signature is not checked", flush=True)
    return signer


def publish(spec: JobSpec, job_dir: Path) -> JobResult:
    """Log the retrain's run and upload its signed model to W&B (offline with
    WANDB_MODE=offline; `wandb sync` uploads it later). The model's metadata marks it as
    produced by this device, so its own upload cannot re-trigger a retrain."""
    import wandb
    from wandb.errors import CommError

    model_dir = job_dir / "model"
    meta = read_metadata(model_dir)
    signature = json.loads((model_dir / "model.sig").read_text(encoding="utf-8"))
    event, args = spec.event, spec.args
    collection = event.get("collection") or "dataset"
    project = event.get("project") or os.environ.get("WANDB_PROJECT") or "edgehook"
    try:
        run = wandb.init(
            project=project,
            entity=event.get("entity"),
            job_type="retrain",
            dir=str(job_dir),
            config={
                **meta.train_config,
                "sources": meta.sources,
                "retrain_job": args.get("retrain_job"),
            },
        )
        if run.settings.mode != "offline":
            for source in meta.sources:
                run.use_artifact(source)
        _log_metrics(run, meta)
        artifact = wandb.Artifact(
            f"{collection}-int8", type="model", metadata=_artifact_metadata(meta, signature)
        )
        artifact.add_dir(str(model_dir))
        aliases = ["candidate", *(["production"] if args.get("promoted") else [])]
        run.log_artifact(artifact, aliases=aliases)
        produced = []
        if run.settings.mode != "offline":
            artifact.wait()
            produced.append(
                {
                    "version_string": f"{run.entity}/{project}/{artifact.name}",
                    "artifact_id": artifact.id,
                }
            )
        where = run.dir
        run.finish()
    except CommError as exc:
        raise TransientError(f"W&B unavailable while publishing: {exc}") from exc
    offline = not produced
    return JobResult(
        summary=(
            f"logged the run and {collection}-int8 ({', '.join(aliases)}) "
            + (
                f"offline in {Path(where).parent}; upload with `wandb sync`"
                if offline
                else f"as {produced[0]['version_string']}"
            )
        ),
        produced=produced,
    )


def _artifact_metadata(meta: ModelMeta, signature: dict[str, Any]) -> dict[str, Any]:
    """The model artifact's metadata: who signed it (so another device can pin the key) and
    the marks that keep this device's own upload from re-triggering a retrain."""
    return {
        "edgehook_device": meta.device,
        "edgehook_key_id": signature["key_id"],
        "edgehook_public_key": signature["public_key"],
        "edgehook_weights_sha256": meta.weights_sha256,
        "int8_accuracy": meta.int8_accuracy,
        "classes": meta.classes,
        "sources": meta.sources,
    }


def _log_metrics(run: Any, meta: ModelMeta) -> None:
    """The training curve, the confusion matrix and the headline figures, on the W&B run."""
    import wandb

    for row in meta.metrics.get("epochs", []):
        run.log(row, step=int(row["epoch"]))
    classes, confusion = meta.classes, meta.metrics["confusion"]
    table = wandb.Table(  # the counts that are not 0: 1,000 classes make a million cells
        columns=["true", "predicted", "count"],
        data=[
            [classes[i], classes[j], int(n)]
            for i, row in enumerate(confusion)
            for j, n in enumerate(row)
            if n
        ],
    )
    rows = meta.metrics.get("per_class", [])
    per_class = wandb.Table(
        columns=["class", "precision", "recall", "f1", "support"],
        data=[[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in rows],
    )
    run.log({"confusion": table, "per_class": per_class})
    run.summary.update(
        {k: meta.metrics[k] for k in ("int8_accuracy", "qat_accuracy", "fp32_accuracy")}
    )
    run.summary.update(meta.latency)


ACTIONS: dict[str, Callable[[JobSpec, Path], JobResult]] = {
    "publish": publish,
    "download": download,
    "retrain": retrain,
    "deploy": deploy,
}


def _version_string(event: dict[str, Any]) -> str | None:
    parts = [event.get(k) for k in ("entity", "project", "collection")]
    tag = event.get("version") or event.get("alias")
    return f"{parts[0]}/{parts[1]}/{parts[2]}:{tag}" if all(parts) and tag else None


def main(argv: list[str]) -> int:
    job_dir = Path.cwd()
    spec = JobSpec.read(Path(argv[0]))
    stalled = False
    try:
        result = ACTIONS[spec.action](spec, job_dir)
        code = 0
    except TransientError as exc:
        result, code = JobResult(error=str(exc), transient=True), EXIT_TRANSIENT
        stalled = isinstance(exc, StalledError)
    except JobError as exc:
        result, code = JobResult(error=str(exc)), EXIT_FAILED
    except Exception as exc:
        traceback.print_exc()
        result, code = JobResult(error=f"internal error: {type(exc).__name__}: {exc}"), EXIT_FAILED
    result.write(job_dir)
    print(result.summary or f"error: {result.error}", flush=True)
    if stalled:
        sys.stderr.flush()
        os._exit(code)  # skip the exit handlers that would join the stuck threads
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
