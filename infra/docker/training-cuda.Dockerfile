# A training base image, CUDA: PyTorch's CUDA 12.4 runtime image (Python 3.11, NCCL) with mlyard's
# training launcher, for the gpu pool. Multi-node trainings use NCCL through torchrun.
#   docker build -f infra/docker/training-cuda.Dockerfile -t mlyard-training:0.1.0-cuda .
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

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
# torch comes with the base image; the constraints' torch pin is for the CPU build, so it is left out
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt . \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlyard --create-home --shell /usr/sbin/nologin mlyard \
    && mkdir -p /mlyard/data && chown 10001:10001 /mlyard/data

USER 10001:10001
CMD ["python", "-m", "torch.distributed.run", "--help"]
