# mlyard's images, one target each, on Debian 12 with Debian's Python 3.11 in a virtual environment, run as
# user 10001 (no root at run time). Built from the project root after `make dist` (dist/: mlyard's wheel and
# the pinned requirements of each image, from pyproject.toml and constraints.txt):
#   docker build -f infra/docker/mlyard.Dockerfile --target platform -t registry.example/mlyard:0.1.0 .
# targets: platform (the API, gateway, scheduler, MLflow, the pools' workers and the cpu pool's runs),
# serving (endpoint stages' model servers), training-cpu, training-cuda (the gpu pool's runs: PyPI's torch
# with its CUDA libraries; the node's driver comes from the GPU operator), notebook (JupyterLab).
# `make images` builds every target here with buildah and runs each entry point as its user with a
# read-only root file system (tests/images).
FROM debian:12-slim AS python

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    VIRTUAL_ENV=/opt/mlyard PATH=/opt/mlyard/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/mlyard MLYARD_HOME=/mlyard/data

# Debian's pip 23.0 cannot resolve the pinned set (soupsieve's newer metadata): a pinned current pip can
# hadolint ignore=DL3008
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/mlyard \
    && pip install -q pip==26.3 \
    && groupadd --gid 10001 mlyard \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlyard --create-home --shell /usr/sbin/nologin mlyard \
    && mkdir -p /mlyard/data && chown 10001:10001 /mlyard/data

# the platform's dependencies, pinned: a layer of their own, kept while only mlyard's code changes
COPY constraints.txt dist/requirements.txt /opt/mlyard/pins/
RUN pip install -q -c /opt/mlyard/pins/constraints.txt -r /opt/mlyard/pins/requirements.txt

FROM python AS platform
COPY dist/mlyard-0.1.0-py3-none-any.whl /opt/mlyard/pins/
RUN pip install -q --no-deps /opt/mlyard/pins/mlyard-0.1.0-py3-none-any.whl
USER 10001:10001
# Each Deployment of infra/k8s names its own command; alone the image answers what it is.
CMD ["mlyard", "--help"]

FROM platform AS serving
ENV MLYARD_HOME=/tmp/mlyard
ENTRYPOINT ["mlyard", "serve"]
CMD ["--help"]

FROM python AS training-cpu
# the CPU build of torch (PyTorch's own index; TORCH_INDEX= empty where pip's configuration finds it)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY dist/requirements-torch.txt /opt/mlyard/pins/
RUN pip install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -c /opt/mlyard/pins/constraints.txt \
        -r /opt/mlyard/pins/requirements-torch.txt
COPY dist/mlyard-0.1.0-py3-none-any.whl /opt/mlyard/pins/
RUN pip install -q --no-deps /opt/mlyard/pins/mlyard-0.1.0-py3-none-any.whl
USER 10001:10001
CMD ["python", "-c", "import torch; print('torch', torch.__version__)"]

FROM python AS training-cuda
# PyPI's torch carries its CUDA libraries (the nvidia-* wheels): nothing but the node's driver is needed.
# From PyPI alone (no pip configuration file: no local wheel folder offers a CPU build in its place);
# CA_BUNDLE: the machine's, where a build step finds it.
ARG CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
COPY dist/requirements-torch.txt /opt/mlyard/pins/
RUN PIP_CONFIG_FILE=/dev/null pip install -q --cert "$CA_BUNDLE" --index-url https://pypi.org/simple \
        -c /opt/mlyard/pins/constraints.txt -r /opt/mlyard/pins/requirements-torch.txt \
    && python -c "import torch; assert torch.version.cuda, torch.__version__"
COPY dist/mlyard-0.1.0-py3-none-any.whl /opt/mlyard/pins/
RUN pip install -q --no-deps /opt/mlyard/pins/mlyard-0.1.0-py3-none-any.whl
USER 10001:10001
CMD ["python", "-m", "torch.distributed.run", "--help"]

FROM training-cpu AS notebook
ENV HOME=/mlyard/notebook/boot/home SHELL=/bin/bash
USER 0:0
COPY dist/requirements-notebook.txt /opt/mlyard/pins/
# JupyterLab's jsonschema[format-nongpl] brings rfc3987-syntax, 1.9 s of CPU at every Prefect import (Makefile)
RUN pip install -q -c /opt/mlyard/pins/constraints.txt -r /opt/mlyard/pins/requirements-notebook.txt \
    && pip uninstall -q -y rfc3987-syntax \
    && usermod --home /mlyard/notebook/boot/home --shell /bin/bash mlyard \
    && mkdir -p /mlyard/notebook/boot /mlyard/notebook/data && chown -R 10001:10001 /mlyard/notebook
USER 10001:10001
CMD ["python", "-m", "mlyard.tasks.notebook_boot", "--help"]
