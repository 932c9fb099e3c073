#!/usr/bin/env bash
# check-client-package.sh - proves that another package can depend on BrokerClient by version.
#
# Clones this repository's committed HEAD into a temporary directory, tags the clone 1.0.0, and builds a scratch
# package that says `.package(url: "file://<clone>", from: "1.0.0")` and depends on the BrokerClient product.
# SwiftPM refuses a versioned dependency whose product's targets use unsafeFlags, so this fails if BrokerClient or
# WireProtocol ever gets one. The scratch package's main.swift is the Swift snippet of README.md, compiled with
# `import BrokerClient` alone, so the README's example keeps compiling. Nothing is run and no network is used
# (dependencies come from the local package mirror, as for the project itself).
#
#   scripts/check-client-package.sh          # uses $TMPDIR; removes its directory afterwards
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/brokerclient-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

git clone --quiet "$here" "$work/brokerd"
git -C "$work/brokerd" -c user.name=ci -c user.email=ci@localhost tag -a 1.0.0 -m "scratch tag for the dependency check"

mkdir -p "$work/consumer/Sources/RideService"
cat > "$work/consumer/Package.swift" <<SWIFT
// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ride-service",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "file://$work/brokerd", from: "1.0.0"),
    ],
    targets: [
        .executableTarget(name: "RideService", dependencies: [.product(name: "BrokerClient", package: "brokerd")]),
    ],
    swiftLanguageModes: [.v6]
)
SWIFT

# The README's Swift snippet, verbatim, as the program's top-level code.
awk '/^```swift$/ { inside = 1; next } /^```$/ { if (inside) exit } inside { print }' "$here/README.md" \
    > "$work/consumer/Sources/RideService/main.swift"
if ! grep -q '^import BrokerClient$' "$work/consumer/Sources/RideService/main.swift"; then
    echo "check-client-package: README.md has no Swift snippet starting with 'import BrokerClient'" >&2
    exit 1
fi

cd "$work/consumer"
swift build --product RideService
echo "check-client-package: a package depending on BrokerClient from: 1.0.0 resolved and built, README snippet included"
