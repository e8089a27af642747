# syntax=docker/dockerfile:1
# The fab server: `wafer-fab serve` (gRPC FabService on 50051, HTTP API, review UI and /metrics
# on 8080). Extra `fab`: ONNX Runtime, PostgreSQL driver, FAISS; no PyTorch, no MLflow.
# Build from the repository root:
#   docker build -f infra/docker/fab.Dockerfile -t wafer-fab .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
# Every package folder: the wheel lists them all; only the `fab` extra's dependencies install.
COPY proto ./proto
COPY wafercore ./wafercore
COPY edge ./edge
COPY fab_server ./fab_server
COPY cloud ./cloud
COPY review_ui ./review_ui
COPY launcher ./launcher
COPY models ./models
RUN pip install -c constraints.txt --upgrade pip setuptools wheel \
    && pip install -c constraints.txt '.[fab]'
RUN python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'mlflow')))"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 wafer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/wafer --no-create-home \
        --shell /usr/sbin/nologin wafer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/wafer /var/lib/wafer/fab
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FAB_GRPC_HOST=0.0.0.0 \
    FAB_GRPC_PORT=50051 \
    FAB_HTTP_HOST=0.0.0.0 \
    FAB_HTTP_PORT=8080 \
    FAB_ARTIFACT_DIR=/var/lib/wafer/fab/artifacts \
    FAB_SYNC__HASH_KEY_FILE=/var/lib/wafer/fab/sync-hash.key \
    FAB_SYNC__TRUSTED_KEYS_DIR=/var/lib/wafer/fab/trusted-keys
WORKDIR /var/lib/wafer
USER 10001:10001
EXPOSE 50051 8080
# /healthz: 200 only when the database answers at this code's migration head, else 503.
HEALTHCHECK --interval=15s --timeout=8s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FAB_HTTP_PORT', '8080'), timeout=7)"]
CMD ["wafer-fab", "serve"]
