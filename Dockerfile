# syntax=docker/dockerfile:1
# The `igl` binary in a small image. Build from the repository root:
#
#   docker build -t igl:latest .
#   docker run --rm igl:latest --version
#
# One image runs every shape and component: `igl node --component NAME ...` (or
# IGL_COMPONENTS), `igl migrate`, `igl channel`, `igl config check`. The health check calls
# GET /healthz on port 8080, so every container should enable an HTTP API; worker-only
# processes add `--component admin-api` (which also gives them /readyz and /metrics).

ARG RUST_VERSION=1.95

# --- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-trixie AS builder
WORKDIR /src
# Only what the build needs (.dockerignore keeps target/, .git and data out). The build
# needs nothing but crates.io: SQL is checked at run time, Swagger UI is vendored.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin igl \
    && install -m 0755 target/release/igl /usr/local/bin/igl

# --- run --------------------------------------------------------------------------------
FROM debian:trixie-slim AS runtime
# ca-certificates: TLS to S3, identity providers and other nodes; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/igl --create-home --shell /usr/sbin/nologin igl
COPY --from=builder /usr/local/bin/igl /usr/local/bin/igl
USER 10001:10001
# The default data directory ./data is /var/lib/igl/data (embedded shape only). No IGL_*
# defaults are baked in: environment variables override the configuration file, so an ENV
# here would silently win over the operator's file. Set `http.bind = "0.0.0.0:8080"` (or
# IGL_HTTP__BIND) to reach the APIs from outside the container.
WORKDIR /var/lib/igl
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--max-time", "2", "http://127.0.0.1:8080/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/igl"]
CMD ["node"]
