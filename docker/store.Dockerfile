# KV store image: slim Python with the store's own dependencies only (numpy, gRPC, prometheus
# client, faiss-cpu): no torch, Ray, transformers, Triton or matplotlib.
#   docker build -f docker/store.Dockerfile -t wavekv-store .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/wavekv
COPY pyproject.toml README.md ./
COPY wavekv_proto ./wavekv_proto
COPY kvstore_server ./kvstore_server
COPY client ./client
RUN pip install ".[store]"

RUN useradd --create-home --uid 10001 wavekv && mkdir -p /data && chown wavekv /data
USER wavekv
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "kvstore_server.healthcheck", "--address", "127.0.0.1:50051", "--timeout", "3"]
CMD ["python", "-m", "kvstore_server", "--host", "0.0.0.0", "--port", "50051"]
