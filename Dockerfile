# grip-proxy: built in the official Rust image, run from a slim Debian image as a non-root user.
# The image also carries the example origin (examples/origin.rs, as `grip-origin`) that docker-compose.yml runs.
#
#   docker build -t grip-proxy .
#   docker run --rm -p 7999:7999 grip-proxy --origin http://host.docker.internal:8080 --listen 0.0.0.0:7999
#
# TLS (HTTPS clients and origins, rediss:// bus URLs) is always built in, with rustls: no OpenSSL to build or link.
# HTTPS origins and rediss:// are verified against the system's trusted roots by default: the image carries
# Debian's ca-certificates for them.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin grip-proxy --example origin \
    && mkdir /out \
    && cp target/release/grip-proxy /out/grip-proxy \
    && cp target/release/examples/origin /out/grip-origin

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin grip
COPY --from=build /out/grip-proxy /out/grip-origin /usr/local/bin/
COPY config/grip-proxy.toml /etc/grip-proxy/grip-proxy.toml
USER grip
# Clients, and the control API (publish). Flags override the config: see docs/configuration.md.
EXPOSE 7999 5561
ENTRYPOINT ["grip-proxy"]
CMD ["--config", "/etc/grip-proxy/grip-proxy.toml"]
