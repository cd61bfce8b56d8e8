# syntax=docker/dockerfile:1
# rudder-courier: every service binary in one small non-root image; the command picks the
# service (rc-ingress, rc-profiles, rc-accounts, rc-automations, rc-forwarder, rc-delivery, rc-console,
# rc-admin). No protoc needed: the proto crate compiles with protox.
#
#   make image                                  # docker build -t rudder-courier:dev .
#   docker run --rm -p 8080:8080 -e RC_HTTP__LISTEN=0.0.0.0:8080 \
#     -e RC_NATS__URL=nats://… -e RC_REDIS__URL=redis://… rudder-courier:dev rc-ingress
#   docker run --rm -e RC_REDIS__URL=redis://… rudder-courier:dev rc-admin list-workspaces
#
# Builder and runtime share Debian 12 (bookworm), so the binaries' glibc matches.
ARG RUST_VERSION=1.95

# 1. The workspace's manifests with stub sources (changes only with Cargo.toml / Cargo.lock).
FROM rust:${RUST_VERSION}-bookworm AS skeleton
WORKDIR /src
COPY . .
RUN sh scripts/cargo-skeleton.sh /skeleton

# 2. Dependencies, cached in their own layer, then the real sources.
FROM rust:${RUST_VERSION}-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=skeleton /skeleton/ ./
# The tests crate (harness, rc-bench) is not part of the image.
RUN cargo build --release --locked --workspace --exclude rc-tests --bins
COPY . .
# Touch the real sources so cargo never takes a stub's build for theirs, build every binary,
# and collect the service binaries (all named rc-*). The release profile keeps line tables
# (for local profiling): 80 % of each binary. Strip them and keep the symbols, so panic
# backtraces still name functions: 470 MiB of binaries become 87 MiB.
RUN find . -path ./target -prune -o -name '*.rs' -print0 | xargs -0 touch \
    && cargo build --release --locked --workspace --exclude rc-tests --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -perm -u+x -name 'rc-*' -exec cp {} /out/ \; \
    && strip --strip-debug /out/rc-* \
    && ls -l /out

# 3. Runtime: glibc, libgcc, CA certificates and nothing else (no shell), user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="rudder-courier" \
      org.opencontainers.image.description="RudderStack ⇄ Courier services: rc-ingress, rc-profiles, rc-accounts, rc-automations, rc-forwarder, rc-delivery, rc-console, rc-admin" \
      org.opencontainers.image.source="https://github.com/rudder-courier/rudder-courier" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
ENV RC_LOG__FORMAT=json
# One HTTP port per service (API + /healthz, /readyz, /metrics); set RC_HTTP__LISTEN to
# 0.0.0.0:<port>, since the built-in default listens on 127.0.0.1.
EXPOSE 8080 8081 8082 8083 8084 8085
CMD ["rc-ingress"]
