# syntax=docker/dockerfile:1
# c_app: build a virtual environment with the app installed, then copy it into a slim image that
# runs as a non-root user. `docker compose up` (compose.yaml) runs replicas of it behind nginx.

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY c_app ./c_app
# Every dependency has a wheel for this platform: no compiler in either stage.
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MEMORY_DB_PATH=/app/data/customer_service.db \
    UPLOAD_DIR=/app/uploads
RUN groupadd --system --gid 10001 c_app \
    && useradd --system --uid 10001 --gid c_app --home-dir /app --shell /usr/sbin/nologin c_app \
    && mkdir -p /app/data /app/uploads \
    && chown -R c_app:c_app /app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
VOLUME ["/app/data", "/app/uploads"]
# Liveness: the process answers. Readiness (database, Redis, index; not draining) is GET /ready,
# which compose and a load balancer use to send traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]
# SIGTERM drains (SHUTDOWN_GRACE_SECONDS); give `docker stop` at least that long (compose does).
STOPSIGNAL SIGTERM
ENTRYPOINT ["c-app"]
CMD ["serve"]
