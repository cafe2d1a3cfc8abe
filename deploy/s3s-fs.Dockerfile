# An S3-compatible server for the compose network and tests: s3s-fs 0.14.1 (the version CI
# uses; newer releases need a newer rustc). Stores objects as files under its root
# directory; a bucket is a directory of the root. Not for production: use Amazon S3 or
# another S3-compatible service there.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-trixie AS builder
RUN cargo install s3s-fs@0.14.1 --features binary --locked --root /usr/local

FROM debian:trixie-slim
COPY --from=builder /usr/local/bin/s3s-fs /usr/local/bin/s3s-fs
RUN useradd --system --uid 10002 --home-dir /data --create-home s3s
USER 10002
VOLUME ["/data"]
EXPOSE 8014
ENTRYPOINT []
CMD ["s3s-fs", "--host", "0.0.0.0", "--port", "8014", "/data"]
