#!/usr/bin/env bash
# Builds a local image named like Prometheus's official one (prom/prometheus:latest) from
# Debian's `prometheus` package, for the lab's monitoring profile on a machine with a Docker
# engine but no container registry. Users with a registry get the official image instead.
#
# The packages are fetched with `apt-get download` (nothing is installed on this machine) and
# unpacked into an image built FROM scratch, with the C library the binary links against copied
# from this (Debian) machine. Debian's Prometheus serves its classic web UI, whose JavaScript
# comes from Debian's libjs-* packages, so those are unpacked beside it. The entrypoint and the
# paths are the official image's: /bin/prometheus, /etc/prometheus, /prometheus, user nobody.
#
# Needs: apt-get, dpkg-deb, docker. Skips the build when the image exists already.
set -euo pipefail

image=prom/prometheus:latest
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-prometheus-offline: $image exists"
    exit 0
fi

packages=(
    prometheus
    libjs-jquery libjs-jquery-hotkeys libjs-bootstrap4 libjs-popper.js libjs-d3 libjs-rickshaw
    libjs-moment libjs-moment-timezone libjs-mustache libjs-eonasdan-bootstrap-datetimepicker
    fonts-glyphicons-halflings
)

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/debs" "$context/root"
chmod 777 "$context/debs"
fetch() { (cd "$context/debs" && apt-get download -qq "${packages[@]}" 2>/dev/null); }
if ! fetch; then
    apt-get update -qq
    fetch
fi
for deb in "$context"/debs/*.deb; do
    dpkg-deb -x "$deb" "$context/root"
done

root="$context/root"
# The binary links against the C library only (ldd says so); Debian's, from this machine.
rm -rf "$root/usr/share/doc" "$root/usr/share/man"
mkdir -p "$root/bin" "$root/tmp"
while read -r library; do
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
done < <(ldd "$root/usr/bin/prometheus" | grep -o '/[^ ]*')
ln -s /usr/bin/prometheus "$root/bin/prometheus"
ln -s /usr/bin/promtool "$root/bin/promtool"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

cat >"$context/Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
# The data folder belongs to nobody, who runs Prometheus.
COPY --chown=65534:65534 empty/ /prometheus/
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.console.libraries=/usr/share/prometheus/console_libraries", "--web.console.templates=/usr/share/prometheus/consoles"]
EOF
mkdir -p "$context/empty"
DOCKER_BUILDKIT=0 docker build --quiet --network none --tag "$image" "$context" >/dev/null
docker image inspect "$image" --format "build-prometheus-offline: $image is {{.Size}} bytes"
