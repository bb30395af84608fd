#!/usr/bin/env bash
# Prints the path of a Docker Compose v2 binary, fetching one from Debian's packages when this
# machine has none, so the compose test can run the lab with v2 as well as with
# docker-compose 1.29 (what Debian 12 installs).
#
# Debian 12 ships Compose 1.29 only; Debian 13 ("trixie") packages Compose v2 as
# `docker-compose` (a Go binary that needs nothing but libc). The package is downloaded with
# apt from the Debian mirror apt is already configured with (read at run time), unpacked under
# target/tools/ and never installed: the machine's own packages are left alone.
#
# Exit status 1, with the reason on stderr, when no v2 binary can be had.
set -euo pipefail
cd "$(dirname "$0")/../.."

tools="$PWD/target/tools/compose-v2"
binary="$tools/usr/libexec/docker/cli-plugins/docker-compose"

is_v2() { "$1" version 2>/dev/null | grep -Eq 'version v?2\.'; }

if [ -x "$binary" ] && is_v2 "$binary"; then
    echo "$binary"
    exit 0
fi
for plugin in /usr/libexec/docker/cli-plugins/docker-compose \
    /usr/lib/docker/cli-plugins/docker-compose \
    /usr/local/lib/docker/cli-plugins/docker-compose \
    "$HOME/.docker/cli-plugins/docker-compose"; do
    if [ -x "$plugin" ] && is_v2 "$plugin"; then
        echo "$plugin"
        exit 0
    fi
done

command -v apt-get >/dev/null || { echo "compose-v2.sh: no apt-get to fetch Compose v2 with" >&2; exit 1; }

# The mirror that serves this machine's own release, e.g. http://<mirror>/debian/.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null \
    | awk -v c="$codename" '$2 == c && $3 == "main" { print $1; exit }')
[ -n "$mirror" ] || { echo "compose-v2.sh: no Debian main source for '$codename' in apt's sources" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sources" "$work/lists/partial" "$work/cache/archives/partial"
cat >"$work/sources/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/sources"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
apt-get "${apt_private[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_private[@]}" download docker-compose >&2)
deb=$(ls "$work"/docker-compose_*.deb)
rm -rf "$tools"
mkdir -p "$tools"
dpkg-deb -x "$deb" "$tools"
is_v2 "$binary" || { echo "compose-v2.sh: $(basename "$deb") is not Compose v2" >&2; exit 1; }
echo "$binary"
