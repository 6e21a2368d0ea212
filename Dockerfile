# Builds both binaries once; `docker compose` runs them from the small runtime image.
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential perl python3 pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin producer --bin consumer \
    && cp target/release/producer target/release/consumer /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home pipeline
COPY --from=build /usr/local/bin/producer /usr/local/bin/consumer /usr/local/bin/
COPY scripts/container/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY scripts/container/healthcheck.sh /usr/local/bin/healthcheck
# The example pipeline (users + signups_per_minute_by_country) the compose stack runs.
COPY crates/consumer/pipelines /etc/users-pipeline/pipelines
# Non-root by default; started as root (docker compose), the entrypoint runs the program
# as the owner of the output directory instead.
ENTRYPOINT ["docker-entrypoint.sh"]
USER pipeline
WORKDIR /home/pipeline
CMD ["consumer"]
