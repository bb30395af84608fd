#!/usr/bin/env bash
# Builds a local image named like HAProxy's official one (haproxy:latest) from Debian's `haproxy`
# package, for the lab's haproxy profile on a machine with a Docker engine but no container
# registry. Users with a registry get the official image instead.
#
# The package is fetched with `apt-get download` (nothing is installed on this machine) and
# unpacked into an image built FROM scratch, with the shared libraries the binary links against
# copied from this (Debian) machine. The paths are the official image's: the binary on the PATH
# as `haproxy`, the configuration at /usr/local/etc/haproxy/haproxy.cfg, run as an unprivileged
# user, the same default command.
#
# Needs: apt-get, dpkg-deb, ldd, docker. Skips the build when the image exists already.
set -euo pipefail

image=haproxy:latest
if docker image inspect "$image" >/dev/null 2>&1; then
    echo "build-haproxy-offline: $image exists"
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/debs" "$context/root"
chmod 777 "$context/debs"
# HAProxy and the libraries it depends on that a machine may lack (Lua, OpenTracing's wrapper
# and what that one needs); the rest (the C library, OpenSSL, PCRE2, …) come from this machine.
packages=(haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1)
fetch() { (cd "$context/debs" && apt-get download -qq "${packages[@]}" 2>/dev/null); }
if ! fetch; then
    apt-get update -qq
    fetch
fi
for deb in "$context"/debs/*.deb; do
    dpkg-deb -x "$deb" "$context/root"
done

root="$context/root"
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/etc/init.d" "$root/lib/systemd"
# Every library the binary loads, found in the unpacked packages first and on this machine
# otherwise, with the loader; one that neither has stops the build.
unpacked="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
if LD_LIBRARY_PATH="$unpacked" ldd "$root/usr/sbin/haproxy" | grep 'not found'; then
    echo "build-haproxy-offline: libraries missing (above)" >&2
    exit 1
fi
while read -r library; do
    case "$library" in "$root"*) continue ;; esac
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
done < <(LD_LIBRARY_PATH="$unpacked" ldd "$root/usr/sbin/haproxy" | grep -o '/[^ ]*')
mkdir -p "$root/usr/local/bin" "$root/usr/local/etc/haproxy" "$root/tmp" "$root/var/lib/haproxy"
ln -s /usr/sbin/haproxy "$root/usr/local/bin/haproxy"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nhaproxy:x:99:99:haproxy:/var/lib/haproxy:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nhaproxy:x:99:\n' >"$root/etc/group"

cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER haproxy
WORKDIR /var/lib/haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build --quiet --network none --tag "$image" "$context" >/dev/null
docker image inspect "$image" --format "build-haproxy-offline: $image is {{.Size}} bytes"
