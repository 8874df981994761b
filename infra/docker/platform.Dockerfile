# The mlyard platform image: the API, the gateway, the scheduler, the pools' workers and every flow run
# on a Kubernetes pool (infra/k8s, the gpu and cpu job templates). Build from the project root:
#   docker build -f infra/docker/platform.Dockerfile -t mlyard:0.1.0 .
FROM python:3.11.11-slim-bookworm

ARG EXTRAS=""
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
RUN pip install --no-cache-dir -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlyard --create-home --shell /usr/sbin/nologin mlyard \
    && mkdir -p /mlyard/data && chown 10001:10001 /mlyard/data

USER 10001:10001
# Each Deployment of infra/k8s names its own command; alone the image answers what it is.
CMD ["mlyard", "--help"]
