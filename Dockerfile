# Multi-stage build of quotad: one image runs `quotad grpc`, `quotad edge` or `quotad serve`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY crates crates
COPY migrations migrations
# A workspace member (the benchmark's baselines): cargo loads every member's
# manifest, even to build one package.
COPY bench/baselines bench/baselines
RUN cargo build --release --locked -p quotad

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/quota --create-home quota
COPY --from=build /src/target/release/quotad /usr/local/bin/quotad
USER quota
WORKDIR /var/lib/quota
ENV QUOTA_GRPC_ADDR=0.0.0.0:50051 \
    QUOTA_HTTP_ADDR=0.0.0.0:8080 \
    QUOTA_DATABASE_URL=sqlite:///var/lib/quota/quota.db
EXPOSE 50051 8080
ENTRYPOINT ["quotad"]
CMD ["serve"]
