#!/usr/bin/env bash
# Installs brokerd the way a distribution package would (docs/operations.md, "Installing"):
#
#   $PREFIX/bin/brokerd, brokerctl           release builds with the Swift runtime linked in (--static-swift-stdlib),
#                                            so they run on a host without the Swift toolchain
#   $PREFIX/lib/systemd/system/brokerd.{service,socket}   units, paths rewritten for PREFIX and SYSCONFDIR
#   $SYSCONFDIR/brokerd/brokerd.toml         default settings, passed by the unit with --config (an existing,
#                                            edited file is kept; the new default goes next to it as .default)
#   $PREFIX/share/doc/brokerd/               README, LICENSE and docs/*.md (the unit's Documentation=)
#   $PREFIX/share/man/man1/                  brokerd.1, brokerctl.1 (swift-argument-parser's generate-manual)
#   $PREFIX/share/{bash-completion,zsh,fish}/...   shell completions for both commands
#
# Environment: PREFIX (default /usr/local), SYSCONFDIR (default /etc), DESTDIR (staging root, default none: the
# real system), BUILD_DIR (install binaries already built there instead of building), MAN_DIR (man pages already
# generated there instead of generating them; MAN_DIR=none skips them).
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX="${PREFIX:-/usr/local}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
DESTDIR="${DESTDIR:-}"
case "$PREFIX" in /*) ;; *) echo "install.sh: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 64 ;; esac
case "$SYSCONFDIR" in /*) ;; *) echo "install.sh: SYSCONFDIR must be an absolute path, got '$SYSCONFDIR'" >&2; exit 64 ;; esac

if [ -z "${BUILD_DIR:-}" ]; then
    swift build -c release --static-swift-stdlib --product brokerd
    swift build -c release --static-swift-stdlib --product brokerctl
    BUILD_DIR="$(swift build -c release --static-swift-stdlib --show-bin-path)"
fi
for tool in brokerd brokerctl; do
    [ -x "$BUILD_DIR/$tool" ] || { echo "install.sh: $BUILD_DIR/$tool is not built" >&2; exit 66; }
done

if [ -z "${MAN_DIR:-}" ]; then
    # The plugin builds every product (debug reuses a test build) and writes one page per command.
    swift package --allow-writing-to-package-directory generate-manual --configuration debug >/dev/null
    MAN_DIR=".build/plugins/GenerateManual/outputs"
fi

root="$DESTDIR"
bin="$root$PREFIX/bin"
units="$root$PREFIX/lib/systemd/system"
config="$root$SYSCONFDIR/brokerd"
doc="$root$PREFIX/share/doc/brokerd"
man1="$root$PREFIX/share/man/man1"
install -d "$bin" "$units" "$config" "$doc" "$man1" \
    "$root$PREFIX/share/bash-completion/completions" "$root$PREFIX/share/zsh/site-functions" \
    "$root$PREFIX/share/fish/vendor_completions.d"

install -m 0755 "$BUILD_DIR/brokerd" "$BUILD_DIR/brokerctl" "$bin/"

for unit in brokerd.service brokerd.socket; do
    sed -e "s|/usr/local|$PREFIX|g" -e "s|/etc/brokerd|$SYSCONFDIR/brokerd|g" "systemd/$unit" > "$units/$unit.tmp"
    chmod 0644 "$units/$unit.tmp"
    mv "$units/$unit.tmp" "$units/$unit"
done

if [ -e "$config/brokerd.toml" ] && ! cmp -s systemd/brokerd.toml "$config/brokerd.toml"; then
    install -m 0644 systemd/brokerd.toml "$config/brokerd.toml.default"
    echo "install.sh: kept the edited $SYSCONFDIR/brokerd/brokerd.toml; the new default is brokerd.toml.default"
else
    install -m 0644 systemd/brokerd.toml "$config/brokerd.toml"
fi

install -m 0644 README.md LICENSE docs/*.md "$doc/"

if [ "$MAN_DIR" != "none" ]; then
    found=0
    while IFS= read -r page; do
        install -m 0644 "$page" "$man1/"
        found=$((found + 1))
    done < <(find "$MAN_DIR" -name 'broker*.1' \( -name 'brokerd*.1' -o -name 'brokerctl*.1' \))
    [ "$found" -gt 0 ] || { echo "install.sh: no brokerd or brokerctl man pages in $MAN_DIR" >&2; exit 66; }
fi

for tool in brokerd brokerctl; do
    "$BUILD_DIR/$tool" --generate-completion-script bash > "$root$PREFIX/share/bash-completion/completions/$tool"
    "$BUILD_DIR/$tool" --generate-completion-script zsh > "$root$PREFIX/share/zsh/site-functions/_$tool"
    "$BUILD_DIR/$tool" --generate-completion-script fish > "$root$PREFIX/share/fish/vendor_completions.d/$tool.fish"
done

echo "installed brokerd into ${DESTDIR:-/}${DESTDIR:+ as }$PREFIX (settings in $SYSCONFDIR/brokerd/brokerd.toml)"
if [ -z "$DESTDIR" ]; then
    echo "next: systemctl daemon-reload && systemctl enable --now brokerd.service"
fi
