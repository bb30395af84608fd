#!/usr/bin/env bash
# Builds the image mirrorlab:latest on a machine with a Docker engine but no registry.
#
# The Dockerfile's builder stage starts from an image that must be pulled. Here the same static
# binary is built on the host instead (`+crt-static`, as the builder does), and the Dockerfile's
# runtime stage — its lines from `FROM scratch AS runtime` to the end, unchanged except that the
# files come from the build context rather than the builder stage — is built around it with the
# network off. So both paths give the same layout, environment, health check and entrypoint.
#
# Needs: cargo, strip, docker. Prints the image's size at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="$(rustc -vV | sed -n 's/^host: //p')"
echo "build-offline: building a static mirrorlab for $target"
# Built as a side effect of the release simulation test's build (cargo builds the package's
# binaries for its integration tests): the same static release build then serves the image and
# tests/run.sh's release simulation run, which would otherwise compile everything once more.
# The binary is the one `cargo build --release --bin mirrorlab` makes (the Dockerfile's builder),
# but for any feature of a shared dependency that a dev-dependency asks for: a test build unifies
# them.
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo test --release --locked --target "$target" --test simulation --no-run

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/out/usr/local/bin" "$context/out/tmp"
chmod 1777 "$context/out/tmp"
cp "target/$target/release/mirrorlab" "$context/out/usr/local/bin/mirrorlab"
strip "$context/out/usr/local/bin/mirrorlab"

sed -n '/^FROM scratch AS runtime$/,$p' Dockerfile \
    | sed 's#^COPY --from=builder /out/ /$#COPY out/ /#' >"$context/Dockerfile"
if ! grep -q '^COPY out/ /$' "$context/Dockerfile" || grep -q -- '--from=' "$context/Dockerfile"; then
    echo "build-offline: the Dockerfile's runtime stage no longer has the shape this script expects" >&2
    exit 1
fi

DOCKER_BUILDKIT=0 docker build --quiet --network none --tag mirrorlab:latest "$context" >/dev/null
docker image inspect mirrorlab:latest --format 'build-offline: mirrorlab:latest is {{.Size}} bytes'
