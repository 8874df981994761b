# A notebook image: Python, CPU PyTorch, JupyterLab and mlyard's notebook boot (tasks/notebook_boot.py),
# which a notebook's StatefulSet runs (tasks/notebook_cluster.py). rfc3987-syntax (from JupyterLab's
# jsonschema[format-nongpl]) is removed: it adds 1.9 s to every import of Prefect. Register it for notebooks:
#   docker build -f infra/docker/notebook.Dockerfile -t registry.example/mlyard-notebook:0.1.0 .
#   mlyard images create lab --address registry.example/mlyard-notebook:0.1.0 --kind notebook
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    HOME=/mlyard/notebook/boot/home SHELL=/bin/bash

WORKDIR /opt/mlyard
COPY pyproject.toml constraints.txt README.md ./
COPY core core
COPY mlyard mlyard
COPY flows flows
COPY tasks tasks
COPY tuning tuning
COPY schedules schedules
COPY registry registry
COPY serving serving
COPY infra infra
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
        ".[torch,notebook]" \
    && pip uninstall -y rfc3987-syntax \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /mlyard/notebook/boot/home --no-create-home --shell /bin/bash mlyard \
    && mkdir -p /mlyard/notebook/boot /mlyard/notebook/data && chown -R 10001:10001 /mlyard/notebook

USER 10001:10001
CMD ["python", "-m", "tasks.notebook_boot", "--help"]
