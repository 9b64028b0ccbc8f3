# XPlane API and worker image: `xplane api` (default) or `xplane worker`.
# The base is pinned to a patch release; bump it deliberately (and rebuild) for fixes.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git (+ ssh for git@ remotes): the worker clones the config repo and pushes node-pool changes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY xplane ./xplane
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
RUN pip install . && rm -rf /src

# Never run as root: a fixed uid so volume permissions are predictable.
# The data and work dirs exist in the image so named volumes mounted there inherit the owner.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin xplane \
    && mkdir -p /home/xplane/.xplane /home/xplane/work \
    && chown -R xplane:xplane /home/xplane
USER 10001:10001
WORKDIR /home/xplane
ENV XPLANE_DATA_DIR=/home/xplane/.xplane \
    XPLANE_WORKDIR=/home/xplane/work \
    XPLANE_API_HOST=0.0.0.0 \
    XPLANE_API_PORT=8080

# 8080: the API; 9464: a worker's /metrics (XPLANE_METRICS_PORT).
EXPOSE 8080 9464
CMD ["xplane", "api"]
