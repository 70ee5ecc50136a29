# syntax=docker/dockerfile:1
# The trainer image: what KubeRay runs as the Ray head, the workers and the RayJob's submitter
# (`ray job submit ... -- disney-train train ...`). Build from the repository root:
#   docker build -f images/trainer.Dockerfile -t ghcr.io/disney-train/trainer:0.1.0 .
# Every version is a build ARG; tests/test_images.py checks each one against constraints.txt.

# CUDA 12.6 because torch 2.13's CUDA wheels are cu126 and cu130 (cu128 was dropped in 2.12); 12.6
# runs on drivers >= 560 (>= 525 through CUDA's minor-version compatibility), cu130 needs >= 580
# (and is what PyPI's plain torch 2.13.0 is built for, hence the CUDA index below). The torch wheel
# brings its own CUDA libraries and cuDNN (the nvidia-* wheels), so the base adds no cuDNN. It is the
# *devel* flavour on purpose: DeepSpeed builds its ops just in time (see DS_BUILD_OPS below) and the
# GPU run config uses its fused Adam (CPU Adam when offloading), which needs nvcc and the CUDA headers
# at run time. Ubuntu 22.04 rather than 24.04: 24.04's images already own UID 1000 (user `ubuntu`).
ARG CUDA_TAG=12.6.3-devel-ubuntu22.04
# torch's CUDA index must match the base's CUDA major.minor (cu126 <-> 12.6.x).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG TORCH_VERSION=2.13.0
# 3.11: decord 0.6.0 has wheels only up to CPython 3.11.
ARG PYTHON_VERSION=3.11.15
ARG UV_VERSION=0.13.9

# Python comes from uv (python-build-standalone) rather than the deadsnakes PPA: an exact patch
# version, checksum-verified against the hashes built into this pinned uv, the same on 22.04 and
# 24.04, and no third-party apt repository that may drop or lag a release.
FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM nvidia/cuda:${CUDA_TAG} AS builder
ARG PYTHON_VERSION
ARG TORCH_INDEX
ARG TORCH_VERSION
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_MANAGED_PYTHON=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DS_BUILD_OPS=0
# DS_BUILD_OPS=0: DeepSpeed (an sdist) installs without compiling any op; the ops a run uses are
# built just in time on first use (nvcc, g++ and ninja are in the final image) into
# ~/.cache/torch_extensions. Which ones is the run config's choice: fused Adam on GPU, CPU Adam when
# the optimizer state is offloaded, none on CPU (torch's AdamW).
RUN uv python install --no-bin "${PYTHON_VERSION}" \
    && "$(uv python find "${PYTHON_VERSION}")" -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
# torch first, from PyTorch's CUDA index: `torch==2.13.0` in constraints.txt is then satisfied by the
# installed 2.13.0+cu126 (a local version), so the project install below keeps it instead of taking
# PyPI's default (CUDA 13) build.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY disney_train ./disney_train
COPY operator ./operator
RUN pip install -c constraints.txt '.[train]' \
    && python -c "import torch, deepspeed, decord, av, ray; assert torch.__version__ == '${TORCH_VERSION}+' + '${TORCH_INDEX}'.rsplit('/', 1)[-1], torch.__version__"

FROM nvidia/cuda:${CUDA_TAG} AS trainer
# ffmpeg: video tools for the data path; g++: DeepSpeed's just-in-time ops (nvcc is in the base);
# wget: KubeRay's readiness/liveness probes and its submitter's wait loop run `wget ... | grep success`.
# libibverbs/librdmacm/providers: NCCL (torch's wheel) loads them for InfiniBand/RoCE between nodes;
# without them it falls back to TCP sockets.
# Not version-pinned: Ubuntu's archive drops superseded versions; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ffmpeg g++ wget ca-certificates libibverbs1 librdmacm1 ibverbs-providers \
    && rm -rf /var/lib/apt/lists/*
# Ray looks its user up by UID (getpass) and writes to $HOME and /tmp/ray; a fixed numeric UID lets
# the pod's securityContext (runAsUser/runAsNonRoot) match it.
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
# KubeRay starts Ray with `bash -lc`; Ubuntu's /etc/profile keeps this PATH.
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    DS_BUILD_OPS=0
USER 1000:1000
WORKDIR /home/ray
