# syntax=docker/dockerfile:1
# The operator image: `disney-train-operator run`, reconciling VideoFineTunes into KubeRay RayJobs.
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/disney-train/operator:0.1.0 .
# It installs only `.[operator]` (kopf, the Kubernetes client, prometheus-client and the light core):
# no torch, no Ray (tests/test_images.py computes that closure). The chart runs it with a read-only
# root filesystem and an emptyDir at /tmp, so nothing here writes at run time.
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY disney_train ./disney_train
COPY operator ./operator
# pip compiles every installed module to bytecode here, so the read-only image never needs to.
RUN /opt/venv/bin/pip install -c constraints.txt '.[operator]' \
    && /opt/venv/bin/python -c "import kopf, kubernetes, disney_operator.handlers"

FROM ${PYTHON_IMAGE} AS operator
RUN groupadd --gid 65532 operator \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin operator
COPY --from=builder /opt/venv /opt/venv
# HOME=/tmp: the only writable place (the chart's emptyDir); nothing is expected to be written there.
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["disney-train-operator"]
CMD ["run", "--all-namespaces"]
