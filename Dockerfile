# Shoal's two images from one file (docs/adr/0008-shipping.md):
#
#   docker build --target shoal       -t shoal:TAG .        the scheduler: `shoal serve` on 0.0.0.0:8080
#   docker build --target shoal-agent -t shoal-agent:TAG .  the sandbox image (kubernetes, docker providers)
#
# `deploy/docker/build.sh` builds both and tags them with the version and git revision.
#
# Stage 1 compiles both binaries with cargo in RUST_IMAGE. Stage 2 and 3 copy them into
# RUNTIME_IMAGE, a small Debian, with a non-root user. With no registry in reach, the bases can be
# images made on the host (deploy/docker/base-image.sh) and the binaries ones cargo already built
# (PREBUILT=a directory of the build context holding `shoal` and `shoal-agent`): then the builder
# stage copies them instead of compiling.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# The legacy builder keeps this stage as an untagged image:
# `docker image prune --filter label=shoal.stage=builder` removes it.
LABEL shoal.stage=builder
ARG PREBUILT=
ARG SHOAL_REVISION=unknown
ENV SHOAL_REVISION=${SHOAL_REVISION}
WORKDIR /src
COPY . .
RUN set -eu; mkdir -p /out; \
    if [ -n "$PREBUILT" ]; then \
        cp "$PREBUILT/shoal" "$PREBUILT/shoal-agent" /out/; \
    else \
        cargo build --release --locked -p shoal-scheduler -p shoal-agent --bin shoal --bin shoal-agent; \
        cp target/release/shoal target/release/shoal-agent /out/; \
    fi; \
    chmod 0755 /out/shoal /out/shoal-agent

FROM ${RUNTIME_IMAGE} AS shoal-agent
ARG SHOAL_VERSION=dev
ARG SHOAL_REVISION=unknown
LABEL org.opencontainers.image.title="shoal-agent" \
      org.opencontainers.image.version="${SHOAL_VERSION}" \
      org.opencontainers.image.revision="${SHOAL_REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/shoal-agent /usr/local/bin/shoal-agent
# /work: the sandbox's working directory, the agent's own.
RUN mkdir -p /work && chown 65532:65532 /work
WORKDIR /work
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/shoal-agent"]

FROM ${RUNTIME_IMAGE} AS shoal
ARG SHOAL_VERSION=dev
ARG SHOAL_REVISION=unknown
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.version="${SHOAL_VERSION}" \
      org.opencontainers.image.revision="${SHOAL_REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/shoal /out/shoal-agent /usr/local/bin/
# /var/lib/shoal: the data directory (the SQLite store, a generated admin token); mount a volume.
RUN mkdir -p /var/lib/shoal && chown 65532:65532 /var/lib/shoal && chmod 0700 /var/lib/shoal
ENV SHOAL_LISTEN=0.0.0.0:8080 \
    SHOAL_DATA_DIR=/var/lib/shoal \
    SHOAL_AGENT_BIN=/usr/local/bin/shoal-agent \
    SHOAL_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
VOLUME ["/var/lib/shoal"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/shoal", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/shoal"]
CMD ["serve"]
