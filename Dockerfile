# syntax=docker/dockerfile:1
# `ingot serve /mnt/models`: a model repository or a single bundle on a volume (KServe's storage
# initializer fills /mnt/models), over HTTP (8000: OpenAI API, KServe v2 REST), gRPC (8001:
# KServe v2 / Triton) and Prometheus metrics (8002). No model is baked in, and the build
# contacts no model hub: only PyPI (and the PyTorch CPU wheel index for the CPU variant).
#
#   docker build -t ingot:cpu .
#   docker build -t ingot:gpu --build-arg VARIANT=gpu --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3 .
#   docker run --rm -p 8000-8002:8000-8002 -v "$PWD/out/smol:/mnt/models:ro" ingot:cpu
#   docker run --rm -p 8000-8002:8000-8002 -v "$PWD/repo:/mnt/models:ro" ingot:cpu --kv-cache-memory 1GiB
#
# Arguments after the image name are appended to `ingot serve /mnt/models --host 0.0.0.0`.

ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# cpu: torch's CPU wheel (torch is only for `ingot build`; serving runs ONNX Runtime);
# gpu: a TensorRT base image (BASE_IMAGE), its TensorRT visible to the venv, `ingot[tensorrt]`.
# python3-venv, where the base image lacks it, comes at the version of the base image's distribution.
ARG VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    PATH=/opt/ingot/bin:$PATH

# hadolint ignore=DL3008
RUN set -eux; \
    case "$VARIANT" in \
      cpu) venv_flags="" ;; \
      gpu) venv_flags="--system-site-packages" ;; \
      *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    if ! python3 -m venv $venv_flags /opt/ingot; then \
      apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*; \
      python3 -m venv $venv_flags /opt/ingot; \
    fi

COPY pyproject.toml README.md /src/
COPY ingot /src/ingot
RUN set -eux; \
    if [ "$VARIANT" = cpu ]; then \
      pip install --index-url "$TORCH_INDEX" torch==2.13.0; \
      pip install /src; \
    else \
      pip install "/src[tensorrt]"; \
    fi; \
    rm -rf /src; \
    ingot --help > /dev/null

# a non-root user, numeric so that Kubernetes' runAsNonRoot can verify it (Ubuntu-based TensorRT
# images already have uid 1000: "ubuntu"); the models are only read
RUN set -eux; \
    if ! getent passwd 1000 > /dev/null; then \
      groupadd --gid 1000 ingot; \
      useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ingot; \
    fi; \
    mkdir -p /mnt/models
USER 1000:1000

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"]
ENTRYPOINT ["ingot", "serve", "/mnt/models", "--host", "0.0.0.0"]
