# An armwheels builder for x86_64 hosts: it builds ARM wheels in containers of the host's
# Docker engine (emulated by QEMU, or cross-compiled in the cross image), driven through
# the engine's socket with the Docker SDK; no docker CLI is needed.
#
# Built like Dockerfile.master, from wheels only (`python -m builder.service_images`).
# What the host must give it (docker/README.md, docker/compose.yaml):
# - the socket, /var/run/docker.sock, and its group: the builder runs as uid 10001 and
#   needs the socket's group id added (`group_add`, `stat -c %g /var/run/docker.sock`).
#   Whoever uses that socket is root on the host: give this container to nobody else.
# - QEMU's binfmt handlers registered on the host with the fix-binary flag (Debian's
#   qemu-user-static and binfmt-support do it), so arm64/armhf build containers run;
# - a host directory mounted at the same path inside (ARMWHEELS_HOST_DIR), holding the
#   work directory: the engine mounts the builder's files into build containers by
#   their host paths, so they must be the same here and there;
# - the build images of its target (`armwheels image build --arch ARCH`, or PyPA's).
# Its token comes from ARMWHEELS_BUILDER__TOKEN or ARMWHEELS_BUILDER__TOKEN_FILE.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

COPY wheels/ /tmp/armwheels-wheels/
COPY entrypoint healthcheck /usr/local/lib/armwheels/
RUN python3 -m venv /opt/armwheels \
    && /opt/armwheels/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/armwheels-wheels armwheels \
    && rm -rf /tmp/armwheels-wheels \
    && groupadd --system --gid 10001 armwheels \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/armwheels \
        --shell /usr/sbin/nologin armwheels \
    && install -d -o armwheels -g armwheels -m 0755 /var/lib/armwheels \
    && chmod 0755 /usr/local/lib/armwheels/entrypoint /usr/local/lib/armwheels/healthcheck

ENV PATH=/opt/armwheels/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
USER armwheels
WORKDIR /var/lib/armwheels
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/lib/armwheels/healthcheck", "builder"]
ENTRYPOINT ["/usr/local/lib/armwheels/entrypoint"]
CMD ["armwheels", "builder", "--arch", "aarch64"]
