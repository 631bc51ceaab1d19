# syntax=docker/dockerfile:1
# The pipeline worker and predictor on an NVIDIA Jetson, training on CUDA. The base image
# brings NVIDIA's CUDA build of torch and TensorRT for the Jetson; edgehook is installed
# next to it with that exact torch pinned, so pip can never swap in a CPU or x86 wheel.
# TENSORRT names the TensorRT major version the base must carry; the build fails if not.
#   JetPack 6 (L4T r36, TensorRT 10), the default:
#     docker build -f deploy/worker-jetson.Dockerfile -t edgehook-worker:jetson .
#   JetPack 7 (L4T r38, TensorRT 11; implicit INT8 and calibrators are gone, Q/DQ only):
#     docker build -f deploy/worker-jetson.Dockerfile --build-arg TENSORRT=11 \
#       --build-arg BASE=<a JetPack 7 image with torch and TensorRT 11> -t edgehook-worker:jetson7 .
#   docker run --runtime nvidia ...   (compose: deploy/compose.jetson.yaml)
# Other JetPack 6 bases with torch work the same way, e.g. dustynv/l4t-pytorch:r36.4.0.
ARG BASE=nvcr.io/nvidia/pytorch:24.12-py3-igpu

FROM ${BASE}
ARG UID=10001
ARG TENSORRT=10
LABEL org.opencontainers.image.description="edgehook worker for Jetson, TensorRT ${TENSORRT}"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgehook/ edgehook/
COPY core/ core/
COPY receiver/ receiver/
COPY pipeline/ pipeline/
# --system-site-packages: the venv sees the base image's torch and torchvision; the
# constraint pins both.
RUN python3 -m venv --system-site-packages /opt/edgehook \
 && /opt/edgehook/bin/python -c "import torch, torchvision; print(f'torch=={torch.__version__}'); print(f'torchvision=={torchvision.__version__}')" > /tmp/torch.txt \
 && /opt/edgehook/bin/pip install --constraint /tmp/torch.txt ".[pipeline,predictor,onnx]" \
 && /opt/edgehook/bin/python -c "import pipeline.nn.quantize, pipeline.worker, pipeline.models.predictor, onnxruntime, torchvision, wandb" \
 && /opt/edgehook/bin/python -c "import sys, tensorrt; v = tensorrt.__version__; sys.exit(None if v.split('.')[0] == '${TENSORRT}' else f'the base has TensorRT {v}, not ${TENSORRT}')" \
 && rm -rf /src /tmp/torch.txt
RUN groupadd --system --gid ${UID} edgehook \
 && useradd --system --uid ${UID} --gid edgehook --home-dir /nonexistent --shell /usr/sbin/nologin \
      --groups video edgehook \
 && install -d -o edgehook -g edgehook -m 0700 /data
COPY deploy/edgehook.toml /etc/edgehook/edgehook.toml
WORKDIR /
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
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgehook"]
CMD ["worker"]
