# A training base image, CPU: Python, CPU PyTorch and mlyard's training launcher, for the cpu pool or
# a spec's `image`. An algorithm's requirements.txt is installed at run time on top.
#   docker build -f infra/docker/training-cpu.Dockerfile -t mlyard-training:0.1.0-cpu .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    HOME=/home/mlyard MLYARD_HOME=/mlyard/data

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
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu ".[torch]" \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlyard --create-home --shell /usr/sbin/nologin mlyard \
    && mkdir -p /mlyard/data && chown 10001:10001 /mlyard/data

USER 10001:10001
CMD ["python", "-m", "torch.distributed.run", "--help"]
