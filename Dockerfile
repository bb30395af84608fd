# mirrorlab's image: one static binary on an empty base.
#
# Two stages. The builder compiles mirrorlab as a static glibc executable, so the runtime needs
# no libraries, no shell and no package manager. The runtime stage is everything below the
# "runtime" line; tests/docker/build-offline.sh builds exactly those lines around a binary made
# on the host, for machines that cannot pull the builder's base image. Keep that stage free of
# anything but COPY, ENV, EXPOSE, HEALTHCHECK, STOPSIGNAL, ENTRYPOINT and CMD.

FROM rust:1-bookworm AS builder
# rusqlite's session extension generates its bindings with libclang at build time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `+crt-static` needs an explicit --target, or proc-macro crates fail to build.
RUN target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$target" --bin mirrorlab \
 && mkdir -p /out/usr/local/bin /out/tmp \
 && chmod 1777 /out/tmp \
 && cp "target/$target/release/mirrorlab" /out/usr/local/bin/mirrorlab \
 && strip /out/usr/local/bin/mirrorlab

# ---- runtime -------------------------------------------------------------------------------
FROM scratch AS runtime
COPY --from=builder /out/ /
# SQLite spills large sorts to TMPDIR; the data lives in the bind-mounted /shared.
ENV TMPDIR=/tmp \
    MIRRORLAB_DATA_DIR=/shared/durable \
    MIRRORLAB_INSTALL=/install \
    MIRRORLAB_WEB=0.0.0.0:52773 \
    MIRRORLAB_SUPERSERVER=0.0.0.0:1972 \
    MIRRORLAB_AGENT=0.0.0.0:2188
# 52773: portal and /api; 1972: superserver (mirror data channel); 2188: agent or arbiter.
EXPOSE 52773 1972 2188
# Healthy when the arbiter answers, or the member's instance runs and its portal answers.
HEALTHCHECK --interval=5s --timeout=6s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/mirrorlab", "ctl", "health"]
# The agent stops its instance gracefully (a primary hands over to its backup) on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mirrorlab"]
CMD ["member"]
