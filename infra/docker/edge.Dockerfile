# syntax=docker/dockerfile:1
# The edge node: `wafer-edge serve` (HTTP /classify on 8000, results streamed to the fab).
# Extra `edge` only: ONNX Runtime, no PyTorch, no MLflow. Build from the repository root:
#   docker build -f infra/docker/edge.Dockerfile -t wafer-edge .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
# Every package folder: the wheel lists them all (pyproject's [tool.setuptools] packages);
# only the `edge` extra's dependencies are installed.
COPY proto ./proto
COPY wafercore ./wafercore
COPY edge ./edge
COPY fab_server ./fab_server
COPY cloud ./cloud
COPY review_ui ./review_ui
COPY launcher ./launcher
COPY models ./models
RUN pip install -c constraints.txt --upgrade pip setuptools wheel \
    && pip install -c constraints.txt '.[edge]'
# Guard: nothing in the edge extra may pull the training stack in.
RUN python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'mlflow')))"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 wafer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/wafer --no-create-home \
        --shell /usr/sbin/nologin wafer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/wafer /var/lib/wafer/edge
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGE_WORK_DIR=/var/lib/wafer/edge \
    EDGE_HTTP_HOST=0.0.0.0 \
    EDGE_HTTP_PORT=8000
WORKDIR /var/lib/wafer
USER 10001:10001
EXPOSE 8000
# /healthz: 200 while the node takes work, 503 while its outbox is full (urlopen raises).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGE_HTTP_PORT', '8000'), timeout=4)"]
CMD ["wafer-edge", "serve"]
