#!/usr/bin/env bash
# fuzz.sh - builds the libFuzzer harnesses of Fuzz/ and runs each for SECONDS (default 20; CI runs the default,
# run longer by hand: `scripts/fuzz.sh 3600`). A crash stops with the harness's exit code and leaves the input
# as Fuzz/findings/crash-* (turn it into a unit test, docs in Fuzz/README.md). Corpora grow in Fuzz/corpus/NAME.
#
# Knobs: SANITIZERS (default "fuzzer"; "fuzzer,address" for ASan too, slower to build and run).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-20}
sanitizers=${SANITIZERS:-fuzzer}
cd "$here"
# ld.gold fails on these binaries' debug info; lld (in the Swift toolchain) links them.
swift build --package-path Fuzz -Xswiftc -sanitize="$sanitizers" -Xswiftc -use-ld=lld
mkdir -p Fuzz/findings
# FuzzJSON starts from the schema-checker cases (each schema and each instance a seed), so it begins with JSON.
if [ ! -d Fuzz/corpus/FuzzJSON ] || [ -z "$(ls -A Fuzz/corpus/FuzzJSON)" ]; then
    mkdir -p Fuzz/corpus/FuzzJSON
    python3 - <<'SEED'
import json, pathlib
out = pathlib.Path("Fuzz/corpus/FuzzJSON")
for file in ("json-schema-cases.json", "json-schema-draft07-cases.json"):
    for i, case in enumerate(json.loads(pathlib.Path("Tests/Fixtures", file).read_text())):
        (out / f"{file}-{i}-schema").write_text(json.dumps(case["schema"]))
        for j, test in enumerate(case["tests"]):
            (out / f"{file}-{i}-{j}").write_text(json.dumps(test["data"]))
SEED
fi
for harness in FuzzFrames FuzzRecovery FuzzCore FuzzJSON; do
    mkdir -p "Fuzz/corpus/$harness"
    echo "fuzz.sh: $harness for ${seconds}s" >&2
    log="Fuzz/findings/$harness.log"
    status=0
    "Fuzz/.build/debug/$harness" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="Fuzz/findings/$harness-" "Fuzz/corpus/$harness" > "$log" 2>&1 || status=$?
    grep -E '^(Done|==|SUMMARY|ERROR)|Fatal error' "$log" >&2 || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz.sh: $harness found a crash (exit $status); the input is in Fuzz/findings/" >&2
        exit "$status"
    fi
done
echo "fuzz.sh: no findings in ${seconds}s per harness" >&2
