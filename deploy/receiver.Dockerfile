# syntax=docker/dockerfile:1
# The webhook receiver: starlette + uvicorn, no torch, no wandb. Non-root, no secrets in the
# image, works with a read-only root filesystem (it writes only to /data).
#   docker build -f deploy/receiver.Dockerfile -t edgehook-receiver .
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgehook/ edgehook/
COPY core/ core/
COPY receiver/ receiver/
COPY pipeline/ pipeline/
COPY console/ console/
# the console extra: `edgehook console` runs from this image too (no torch)
RUN python -m venv /opt/edgehook \
 && /opt/edgehook/bin/pip install ".[console]" \
 && /opt/edgehook/bin/python -c "import receiver.app, console.app"

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
    EDGEHOOK_DATA_DIR=/data
USER ${UID}:${UID}
VOLUME ["/data"]
# No EXPOSE: the receiver listens on loopback; the tunnel joins its network namespace.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EDGEHOOK_PORT', '8090') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgehook"]
CMD ["serve"]
