# syntax=docker/dockerfile:1
# The cloud tier: one image for `wafer-cloud serve` (REST API on 8300, CloudSync gRPC on 50061),
# `wafer-cloud worker` and `beat` (Celery) and `wafer-cloud registry` (MLflow on 5000).
# PyTorch CPU by default; a CUDA build takes another wheel index, the version stays the one
# constraints.txt pins:
#   docker build -f infra/docker/cloud.Dockerfile -t wafer-cloud .
#   docker build -f infra/docker/cloud.Dockerfile -t wafer-cloud:cu128 \
#       --build-arg TORCH_VARIANT=cu128 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# cpu, cu126, cu128, ...: the folder of PyTorch's wheel index (TORCH_INDEX_URL overrides it).
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG PYPI_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
RUN pip install -c constraints.txt --upgrade pip setuptools wheel \
    && pip install -c constraints.txt --index-url "${TORCH_INDEX_URL}" \
        --extra-index-url "${PYPI_INDEX_URL}" torch
COPY proto ./proto
COPY wafercore ./wafercore
COPY edge ./edge
COPY fab_server ./fab_server
COPY cloud ./cloud
COPY review_ui ./review_ui
COPY launcher ./launcher
COPY models ./models
# PyTorch is already there (same pin): this installs the rest of the `cloud` extra.
RUN pip install -c constraints.txt --index-url "${PYPI_INDEX_URL}" '.[cloud]'

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="wafer-cloud" io.wafer.torch-variant="${TORCH_VARIANT}"
RUN groupadd --system --gid 10001 wafer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/wafer --no-create-home \
        --shell /usr/sbin/nologin wafer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/wafer /var/lib/wafer/cloud
COPY --from=builder /opt/venv /opt/venv
# The training configs a job may name: the wheel does not carry configs/ (CLOUD_CONFIGS_DIR).
COPY configs /opt/wafer/configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CLOUD_WORK_DIR=/var/lib/wafer/cloud \
    CLOUD_CONFIGS_DIR=/opt/wafer/configs \
    CLOUD_API_HOST=0.0.0.0 \
    CLOUD_API_PORT=8300 \
    CLOUD_SYNC_HOST=0.0.0.0 \
    CLOUD_SYNC_PORT=50061 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /var/lib/wafer
USER 10001:10001
EXPOSE 8300 50061 5000
# The API's /healthz (200 when the cloud database answers at the migration head). The worker,
# beat and registry services override this check (docker-compose.yml, infra/k8s).
HEALTHCHECK --interval=15s --timeout=8s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CLOUD_API_PORT', '8300'), timeout=7)"]
CMD ["wafer-cloud", "serve"]
