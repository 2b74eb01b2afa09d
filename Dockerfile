# syntax=docker/dockerfile:1
# One image with every imgpipe binary; compose picks the command per service.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/imgpipe target/release/imgpipe-ingest \
          target/release/imgpipe-processor target/release/imgpipe-projector \
          target/release/imgpipe-webhooks /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 imgpipe
COPY --from=build /out/ /usr/local/bin/
USER imgpipe
ENV IMGPIPE_LOG_FORMAT=json
# A fixed mmap threshold: buffers of 1 MiB and more (every image buffer) go back to the system
# when freed. glibc's default raises the threshold to 32 MiB after the first large free and
# then keeps freed renders' memory in its arenas: the processor's peak RSS over a hostile
# set rose from 561 to 640 MiB (SECURITY.md).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576
CMD ["imgpipe", "--help"]
