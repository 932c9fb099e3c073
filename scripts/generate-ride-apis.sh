#!/usr/bin/env bash
# generate-ride-apis.sh - regenerates the ride services' Swift API code from their OpenAPI documents.
#
# Each of Sources/{Trip,Passenger,Driver,Notification}API holds an openapi.yaml (the interface, defined up front)
# and an openapi-generator-config.yaml; the generated Types.swift, Server.swift (and Client.swift for the passenger
# API, which the trip service calls) are committed, so a build needs neither the generator nor its build plugin
# (which would add minutes to every clean build). Run this after editing an openapi.yaml, and commit the result:
#
#   scripts/generate-ride-apis.sh            # builds swift-openapi-generator 1.14.3 from the package mirror once
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=1.14.3
tool_dir=${OPENAPI_GENERATOR_DIR:-"${TMPDIR:-/tmp}/swift-openapi-generator-$version"}
if [ ! -x "$tool_dir/.build/debug/swift-openapi-generator" ]; then
    rm -rf "$tool_dir"
    git clone --quiet https://github.com/apple/swift-openapi-generator.git "$tool_dir"
    git -C "$tool_dir" checkout --quiet "$version"
    rm -f "$tool_dir/Package.resolved"
    swift build --package-path "$tool_dir" --product swift-openapi-generator
fi
for api in TripAPI PassengerAPI DriverAPI NotificationAPI; do
    dir="$here/Sources/$api"
    "$tool_dir/.build/debug/swift-openapi-generator" generate "$dir/openapi.yaml" \
        --config "$dir/openapi-generator-config.yaml" --output-directory "$dir/Generated"
done
echo "generate-ride-apis: regenerated Sources/*API/Generated from their openapi.yaml"
