# crypto-live services: one image, the subcommand chooses the service
# (docker run IMAGE producer | s3-sink | dynamo-sink | healthcheck SERVICE | --help).
#
# Stage 1 builds a virtual environment from the versions CI tested (constraints.txt);
# stage 2 copies only that environment onto a clean slim (glibc: librdkafka's wheels need it)
# base and runs it as an unprivileged user. No credentials are baked in: on ECS they come
# from the task role, locally from the environment.
FROM python:3.11.10-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/crypto-live
COPY pyproject.toml README.md constraints.txt ./
COPY crypto_live ./crypto_live
COPY producer ./producer
COPY processors ./processors
RUN /opt/crypto-live/bin/pip install --constraint constraints.txt .

FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/crypto-live/bin:$PATH \
    LOG_FORMAT=json
# /scratch is the one writable path beside a read-only root filesystem (ECS mounts a
# bind-mount volume there; Fargate has no tmpfs): created here for UID 10001 and declared a
# VOLUME, so the mount starts with this owner instead of root's 0755 (ECS "Bind mounts").
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin crypto \
    && mkdir /scratch \
    && chown 10001:10001 /scratch
COPY --from=build /opt/crypto-live /opt/crypto-live
VOLUME ["/scratch"]

USER 10001
# ECS and compose stop with SIGTERM, which reaches Python directly (exec-form ENTRYPOINT, no
# shell in between): every service flushes or commits and exits 0 within its stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["crypto-live"]
CMD ["--help"]
