#!/usr/bin/env bash
# CI: the real install path end to end (docs/operations.md, "Installing"): a release build with the Swift runtime
# linked in, man pages from swift-argument-parser's plugin, staged with DESTDIR as a package build would, then
# checked: the binaries need no Swift libraries, run, and print their version; the man pages render; systemd
# accepts the units. The suite's InstallTests check the layout and the hardening with the debug binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

DESTDIR="$stage" PREFIX=/usr SYSCONFDIR=/etc scripts/install.sh

for tool in brokerd brokerctl; do
    binary="$stage/usr/bin/$tool"
    if ldd "$binary" | grep -q 'libswift\|libFoundation'; then
        echo "check-install: $tool links Swift runtime libraries dynamically:" >&2
        ldd "$binary" >&2
        exit 1
    fi
    "$binary" --version
    page="$stage/usr/share/man/man1/$tool.1"
    [ -s "$page" ] || { echo "check-install: no man page $page" >&2; exit 1; }
    if command -v groff >/dev/null 2>&1; then
        groff -mandoc -Tutf8 "$page" 2>/dev/null | grep -qi "$tool" || { echo "check-install: $page does not render" >&2; exit 1; }
    fi
done

# systemd checks the units with their real paths: install a second time with PREFIX inside the stage, so
# ExecStart= and Documentation= name files that exist on this machine.
rooted="$stage/rooted"
PREFIX="$rooted/usr" SYSCONFDIR="$rooted/etc" BUILD_DIR="$stage/usr/bin" MAN_DIR="$stage/usr/share/man/man1" scripts/install.sh >/dev/null
MANPATH="$rooted/usr/share/man" systemd-analyze verify "$rooted/usr/lib/systemd/system/brokerd.service" \
    "$rooted/usr/lib/systemd/system/brokerd.socket"
systemd-analyze security --offline=yes "$rooted/usr/lib/systemd/system/brokerd.service" | tail -1
echo "check-install: ok"
