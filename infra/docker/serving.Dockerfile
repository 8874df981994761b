# The model server image of endpoint stages on Kubernetes (infra/endpoint): `mlyard serve` on a
# registered model version, listening on 8080.
#   docker build -f infra/docker/serving.Dockerfile -t mlyard-serving:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
    HOME=/home/mlyard MLYARD_HOME=/tmp/mlyard

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
RUN pip install --no-cache-dir -c constraints.txt . \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlyard --create-home --shell /usr/sbin/nologin mlyard

USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["mlyard", "serve"]
CMD ["--help"]
