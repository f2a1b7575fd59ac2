# Multi-stage build: compile in the Rust image, run on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY sql ./sql
COPY web ./web
RUN cargo build --release --locked --bin rowcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 rowcast
COPY --from=build /src/target/release/rowcast /usr/local/bin/rowcast
USER rowcast
EXPOSE 8080
ENTRYPOINT ["rowcast"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
