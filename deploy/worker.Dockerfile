# syntax=docker/dockerfile:1
# The pipeline worker, CPU build (x86_64 and arm64 Linux): torch from PyTorch's CPU index
# (an unpinned torch from PyPI pulls the multi-GB CUDA build), wandb, the training code.
# On a Jetson use deploy/worker-jetson.Dockerfile (CUDA).
#   docker build -f deploy/worker.Dockerfile -t edgehook-worker .
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
# torch and torchvision from the same CPU index, as a pair that imports together
ARG TORCH="torch==2.9.1 torchvision==0.24.1"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgehook/ edgehook/
COPY core/ core/
COPY receiver/ receiver/
COPY pipeline/ pipeline/
RUN python -m venv /opt/edgehook \
 && /opt/edgehook/bin/pip install --index-url ${TORCH_INDEX} ${TORCH} \
 && /opt/edgehook/bin/pip install ".[pipeline,predictor,onnx]" \
 && /opt/edgehook/bin/python -c "import pipeline.nn.quantize, pipeline.worker, pipeline.models.predictor, onnxruntime, torchvision, wandb"

FROM ${PYTHON}
ARG UID=10001
RUN groupadd --system --gid ${UID} edgehook \
 && useradd --system --uid ${UID} --gid edgehook --home-dir /nonexistent --shell /usr/sbin/nologin edgehook \
 && install -d -o edgehook -g edgehook -m 0700 /data
COPY --from=build /opt/edgehook /opt/edgehook
COPY deploy/edgehook.toml /etc/edgehook/edgehook.toml
ENV PATH=/opt/edgehook/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGEHOOK_CONFIG=/etc/edgehook/edgehook.toml \
    EDGEHOOK_DATA_DIR=/data \
    WANDB_ERROR_REPORTING=false
USER ${UID}:${UID}
VOLUME ["/data"]
# No HEALTHCHECK: the worker serves nothing. It is PID 1's only child (run with
# `init: true` / --init so orphans are reaped): if it dies, the container exits and the
# restart policy brings it back; a job it held is requeued when its lease expires.
# SIGTERM: finish the running job within worker.shutdown_grace_s or hand it back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgehook"]
CMD ["worker"]
