# QUIC-Flow reconciler image. Build: docker build -t quicflow .
# Run:   docker run -v /path/to/config-repo:/config -v quicflow-data:/data -p 8080:8080 -p 4433:4433/udp quicflow
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
COPY agent ./agent
COPY schemas ./schemas
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 4433/udp
ENTRYPOINT ["quicflow"]
CMD ["serve", "--repo", "/config", "--data", "/data", "--http", "0.0.0.0:8080", "--quic", "0.0.0.0:4433"]
