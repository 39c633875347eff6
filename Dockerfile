# syntax=docker/dockerfile:1
# cliplabel's container image: the `cliplabel` binary on a slim Debian, run as a non-root user.
# Used by the cluster recipes (deploy/k8s/*.yaml). Build from the repository root:
#
#   docker build -t cliplabel:0.1.0 .                           # binary only
#   docker build -t cliplabel:0.1.0 --build-arg DEMO_MODEL=1 .  # + models/shapes-clip
#   docker run --rm -v "$PWD/images:/data:ro" cliplabel:0.1.0 label \
#       --model /opt/cliplabel/models/shapes-clip --classes /data/classes.txt \
#       --templates shapes --out /tmp/labels.csv /data            # (with DEMO_MODEL=1)
#
# CI lints this file with hadolint; it does not build it (see README "Container image").

# ---- build: the Rust toolchain image (gcc for the C parts: libjpeg-turbo, oniguruma) -------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY prompts ./prompts
COPY examples ./examples
COPY python/Cargo.toml ./python/Cargo.toml
COPY python/src ./python/src
# Only the binary: the Python extension and the tests are not built here.
RUN cargo build --release --locked --bin cliplabel \
    && install -D -m 0755 target/release/cliplabel /out/bin/cliplabel

# The demo model goes in only with --build-arg DEMO_MODEL=1 (it is small, but a real
# deployment mounts its own model).
ARG DEMO_MODEL=0
COPY models ./models
RUN mkdir -p /out/models \
    && if [ "$DEMO_MODEL" = "1" ]; then cp -r models/shapes-clip /out/models/; fi

# ---- run: slim Debian with the binary and its runtime libraries only -----------------------
FROM debian:bookworm-slim
# The binary links only glibc and libgcc_s (both in the base image); ca-certificates lets it
# download hub models when HF_HUB_OFFLINE is not set. Not pinned (DL3008): bookworm's security
# updates replace the version, and a pin would break the build instead of taking the fix.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --user-group cliplabel
COPY --from=build /out/bin/cliplabel /usr/local/bin/cliplabel
COPY --from=build /out/models /opt/cliplabel/models
USER 10001:10001
WORKDIR /home/cliplabel
ENV HF_HOME=/home/cliplabel/.cache/huggingface \
    CLIPLABEL_CACHE=/home/cliplabel/.cache/cliplabel
ENTRYPOINT ["cliplabel"]
CMD ["--help"]
