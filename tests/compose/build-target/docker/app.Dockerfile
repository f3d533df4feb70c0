ARG BASE
FROM ${BASE} AS builder
ARG VERSION
RUN mkdir -p /out && echo "app $VERSION" > /out/version
FROM ${BASE} AS debug
ENV STAGE=debug
FROM ${BASE} AS runtime
COPY --from=builder /out/version /etc/app-version
ENV STAGE=runtime
