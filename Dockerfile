# Container images of lode's three binaries, from one build:
#   docker build --target relayminer -t ghcr.io/lode-pokt/relayminer:0.1.0 .
#   docker build --target operator   -t ghcr.io/lode-pokt/lode-operator:0.1.0 .
#   docker build --target gateway    -t ghcr.io/lode-pokt/gateway:0.1.0 .
# Each final image is distroless (glibc and CA certificates, no shell) and runs as the
# unprivileged user 65532, matching the pods the operator and the chart write
# (runAsNonRoot, readOnlyRootFilesystem, all capabilities dropped).

FROM rust:1.89-bookworm AS build
# libclang for RocksDB's bindings (bindgen); protoc is not needed (protox).
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The operator is built on its own so that its dependency closure is its own: without
# `lode-chain-tx`, and with `lode-kernels` compiled without transaction signing.
RUN cargo build --release --locked -p lode-operator \
    && cargo build --release --locked -p lode-relayminer -p lode-gateway \
    && mkdir /out \
    && cp target/release/relayminer target/release/lode-operator target/release/lode-gateway /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS relayminer
COPY --from=build /out/relayminer /usr/local/bin/relayminer
USER 65532:65532
EXPOSE 8545 9091 7070 9090
ENTRYPOINT ["/usr/local/bin/relayminer"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/lode-operator /usr/local/bin/lode-operator
USER 65532:65532
EXPOSE 9096
ENTRYPOINT ["/usr/local/bin/lode-operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /out/lode-gateway /usr/local/bin/lode-gateway
USER 65532:65532
EXPOSE 8080 9095
ENTRYPOINT ["/usr/local/bin/lode-gateway"]
