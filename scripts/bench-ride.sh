#!/usr/bin/env bash
# bench-ride.sh - the ride services under a burst (docs/benchmarks.md, "The ride services under a burst").
#
# Builds brokerd, ride and ridesim in release mode, starts a throwaway brokerd and `ride all` on 127.0.0.1 in a
# temporary directory, runs ridesim (steady load, a burst of BURST_FACTOR times it, steady again), stops them, and
# draws the run with scripts/ride-chart.py (needs matplotlib).
#
#   scripts/bench-ride.sh [OUT_DIR]        # writes OUT_DIR/ride-run.csv, OUT_DIR/ride-run.txt, OUT_DIR/ride-burst.png
#
# Knobs: RATE (20 trips/s), BURST_FACTOR (10), STEADY (20 s), BURST (30 s), AFTER (30 s), PASSENGERS (200),
# DRIVERS (3000), HOLD (5: the dispatcher's --assignment-hold-seconds), PORT (5694), BASE_PORT (18080).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/ride-bench}; mkdir -p "$out"
PORT=${PORT:-5694}
BASE_PORT=${BASE_PORT:-18080}

(cd "$here" && swift build -c release --product brokerd >&2 && swift build -c release --product ride >&2 \
    && swift build -c release --product ridesim >&2)
bin="$here/.build/release"

d=$(mktemp -d /tmp/ridebench.XXXXXX)
"$bin/brokerd" --port "$PORT" --data-dir "$d/broker" --log-level warning 2> "$d/brokerd.log" &
broker=$!
ride=""
cleanup() {
    [ -n "$ride" ] && { kill -TERM "$ride" 2>/dev/null || true; wait "$ride" 2>/dev/null || true; }
    kill -TERM "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true
    rm -rf "$d"
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
"$bin/ride" all --broker-port "$PORT" --base-port "$BASE_PORT" --data-dir "$d/ride" --log-level warning \
    --assignment-hold-seconds "${HOLD:-5}" 2> "$d/ride.log" &
ride=$!
for port in $(seq "$BASE_PORT" $((BASE_PORT + 4))); do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
done

{
    echo "# ride services $(cd "$here" && git rev-parse --short HEAD) nproc=$(nproc) cpu=\"$(lscpu | sed -n 's/^Model name: *//p')\" date=$(date -u +%FT%TZ)"
    timeout 900 "$bin/ridesim" --broker-port "$PORT" \
        --trip-url "http://127.0.0.1:$BASE_PORT" --passenger-url "http://127.0.0.1:$((BASE_PORT + 1))" \
        --driver-url "http://127.0.0.1:$((BASE_PORT + 2))" --notification-url "http://127.0.0.1:$((BASE_PORT + 3))" \
        --passengers "${PASSENGERS:-200}" --drivers "${DRIVERS:-3000}" --rate "${RATE:-20}" --burst-factor "${BURST_FACTOR:-10}" \
        --steady-seconds "${STEADY:-20}" --burst-seconds "${BURST:-30}" --after-seconds "${AFTER:-30}" --csv "$out/ride-run.csv"
} | tee "$out/ride-run.txt"
python3 "$here/scripts/ride-chart.py" "$out/ride-run.csv" "$out/ride-burst.png"
