# syntax=docker/dockerfile:1
#
# Dockerfile - container image of the mrad attention service.
#
# Two variants from one file, chosen with --build-arg VARIANT:
#   cuda (default)  built on nvidia/cuda devel, run on the matching CUDA
#                   runtime image (it carries cuBLAS); needs --gpus at run time
#   cpu             built and run on debian:bookworm-slim, no CUDA at all
#
# The image runs mrad as an unprivileged user under tini, listens on
# 0.0.0.0:8080, reads every setting from MRAD_* environment variables and
# drains in-flight requests on SIGTERM before it exits.
#
#   docker build -t mrad:cuda .
#   docker build --build-arg VARIANT=cpu -t mrad:cpu .

ARG VARIANT=cuda
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_FLAVOR=ubuntu22.04
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- build stages
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU_FLAVOR} AS build-cuda
ARG DEBIAN_FRONTEND=noninteractive
# Versions follow the pinned base image's distribution and its security
# updates, so packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      make pkg-config libmsgpack-dev libmicrohttpd-dev libuv1-dev \
      libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# sm_80 and sm_90 code plus compute_90 PTX come from attention/module.mk.
RUN make -j"$(nproc)" CUDA=1 all \
 && install -D -m 0755 -t /out bin/mrad \
 && if [ -x bin/mractl ]; then install -m 0755 -t /out bin/mractl; fi

FROM ${DEBIAN_IMAGE} AS build-cpu
ARG DEBIAN_FRONTEND=noninteractive
# Versions follow the pinned base image's distribution and its security
# updates, so packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config libmsgpack-dev libmicrohttpd-dev libuv1-dev \
      libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" CUDA=0 all \
 && install -D -m 0755 -t /out bin/mrad \
 && if [ -x bin/mractl ]; then install -m 0755 -t /out bin/mractl; fi

# -------------------------------------------------------------- runtime stages
# Only the shared libraries mrad and mractl link against, curl for the
# health check and tini as PID 1.  The CUDA runtime image already holds
# libcudart and libcublas.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU_FLAVOR} AS runtime-cuda
ARG DEBIAN_FRONTEND=noninteractive
# Versions follow the pinned base image's distribution and its security
# updates, so packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libmsgpackc2 libmicrohttpd12 libuv1 libcurl4 curl ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-cuda /out/ /usr/local/bin/
# The NVIDIA container runtime mounts the driver only when asked to.  mrad
# runs one compute worker on every GPU the container is given
# (`--gpus all`, `--gpus 2`, a pod's nvidia.com/gpu); MRAD_DEVICES=0,1
# picks some of them.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MRAD_BACKEND=auto \
    MRAD_DEVICES=all

FROM ${DEBIAN_IMAGE} AS runtime-cpu
ARG DEBIAN_FRONTEND=noninteractive
# Versions follow the pinned base image's distribution and its security
# updates, so packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libmsgpackc2 libmicrohttpd12 libuv1 libcurl4 curl ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /out/ /usr/local/bin/
ENV MRAD_BACKEND=cpu

# ----------------------------------------------------------------- final image
# hadolint ignore=DL3006
FROM runtime-${VARIANT}
LABEL org.opencontainers.image.title="mrad" \
      org.opencontainers.image.description="MRA-2 attention over HTTP, with batching and Prometheus metrics"

# A fixed numeric uid so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 mrad \
 && useradd --system --uid 10001 --gid mrad --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin mrad

# Inside a container the service must listen on every interface; the rest
# are mrad's defaults, written out so that `docker inspect` shows them.
ENV MRAD_HOST=0.0.0.0 \
    MRAD_PORT=8080 \
    MRAD_LOG_FORMAT=json \
    MRAD_DRAIN_TIMEOUT_MS=30000

USER 10001:10001
EXPOSE 8080

# /healthz answers 503 once draining or when the backend is broken.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:${MRAD_PORT}/healthz || exit 1"]

# tini forwards SIGTERM to mrad, which stops accepting work, finishes what
# it accepted (up to MRAD_DRAIN_TIMEOUT_MS) and exits 0.  Give `docker stop`
# a longer --time than the drain timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/mrad"]
