# crypto-live services: one image, the subcommand chooses the service.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY crypto_live ./crypto_live
COPY producer ./producer
COPY processors ./processors
RUN pip install --no-cache-dir --constraint constraints.txt . \
    && useradd --create-home --uid 10001 crypto

USER 10001
# ECS and compose stop with SIGTERM; every service commits or flushes and exits 0 within 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["crypto-live"]
CMD ["--help"]
