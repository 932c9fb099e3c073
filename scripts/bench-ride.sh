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
# DRIVERS (3000), HOLD (5: the dispatcher's --assignment-hold-seconds), PORT (5694), BASE_PORT (18080);
# SPLIT=1 runs each service as its own process, the draining ones (dispatcher, driver, notification) under
# `nice -n DRAIN_NICE` (10), instead of all five in one `ride all`.
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
    for pid in $ride; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $ride; do wait "$pid" 2>/dev/null || true; done
    kill -TERM "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true
    rm -rf "$d"
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
if [ "${SPLIT:-0}" = 1 ]; then
    # Each service its own process; the ones that drain the backlog (dispatcher, driver, notification) at CPU
    # priority DRAIN_NICE (default 10): on a shared box the intake (trip, passenger) keeps its share of the CPU.
    pids=""
    for entry in trip:0:0 passenger:1:0 driver:2:1 notification:3:1 dispatcher:4:1; do
        IFS=: read -r service offset drain <<< "$entry"
        niceness=0; [ "$drain" = 1 ] && niceness=${DRAIN_NICE:-10}
        nice -n "$niceness" "$bin/ride" "$service" --broker-port "$PORT" --port $((BASE_PORT + offset)) \
            --passenger-url "http://127.0.0.1:$((BASE_PORT + 1))" --data-dir "$d/ride" --log-level warning \
            --assignment-hold-seconds "${HOLD:-5}" 2>> "$d/ride.log" &
        pids="$pids $!"
    done
    ride="$pids"
else
    "$bin/ride" all --broker-port "$PORT" --base-port "$BASE_PORT" --data-dir "$d/ride" --log-level warning \
        --assignment-hold-seconds "${HOLD:-5}" 2> "$d/ride.log" &
    ride=$!
fi
for port in $(seq "$BASE_PORT" $((BASE_PORT + 4))); do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
done

# CPU use of the whole machine each second (from /proc/stat), to tell CPU saturation from waiting.
python3 - "$out/cpu.csv" <<'CPU' &
import sys, time
def sample():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait
with open(sys.argv[1], "w") as out:
    out.write("epoch,busy_percent,iowait_percent\n")
    total0, idle0 = sample(); io0 = int(open("/proc/stat").readline().split()[5])
    while True:
        time.sleep(1)
        total, idle = sample(); io = int(open("/proc/stat").readline().split()[5])
        dt = max(1, total - total0)
        out.write(f"{time.time():.1f},{100 * (1 - (idle - idle0) / dt):.1f},{100 * (io - io0) / dt:.1f}\n")
        out.flush()
        total0, idle0, io0 = total, idle, io
CPU
sampler=$!
{
    echo "# ride services $(cd "$here" && git rev-parse --short HEAD) nproc=$(nproc) cpu=\"$(lscpu | sed -n 's/^Model name: *//p')\" date=$(date -u +%FT%TZ)"
    timeout 900 "$bin/ridesim" --broker-port "$PORT" \
        --trip-url "http://127.0.0.1:$BASE_PORT" --passenger-url "http://127.0.0.1:$((BASE_PORT + 1))" \
        --driver-url "http://127.0.0.1:$((BASE_PORT + 2))" --notification-url "http://127.0.0.1:$((BASE_PORT + 3))" \
        --passengers "${PASSENGERS:-200}" --drivers "${DRIVERS:-3000}" --rate "${RATE:-20}" --burst-factor "${BURST_FACTOR:-10}" \
        --steady-seconds "${STEADY:-20}" --burst-seconds "${BURST:-30}" --after-seconds "${AFTER:-30}" --csv "$out/ride-run.csv"
} | tee "$out/ride-run.txt"
ended=$(date +%s.%N)
kill "$sampler" 2>/dev/null || true
python3 - "$out/cpu.csv" "$out/ride-run.csv" "$ended" "${STEADY:-20}" "${BURST:-30}" <<'CPU' | tee -a "$out/ride-run.txt"
import csv, sys
cpu = list(csv.DictReader(open(sys.argv[1])))
seconds = len(list(csv.DictReader(open(sys.argv[2]))))
start = float(sys.argv[3]) - seconds  # ridesim's series ends when it exits, one row per second since the load began
steady, burst = int(sys.argv[4]), int(sys.argv[5])
def mean(lo, hi, key):
    values = [float(r[key]) for r in cpu if lo <= float(r["epoch"]) - start < hi]
    return sum(values) / len(values) if values else float("nan")
# The first seconds of each phase are left out (the series is aligned to about a second).
print(f"cpu: busy {mean(2, steady, 'busy_percent'):.0f}% in the steady phase (iowait {mean(2, steady, 'iowait_percent'):.0f}%), "
      f"{mean(steady + 2, steady + burst, 'busy_percent'):.0f}% during the burst (iowait {mean(steady + 2, steady + burst, 'iowait_percent'):.0f}%), of both cores")
CPU
python3 "$here/scripts/ride-chart.py" "$out/ride-run.csv" "$out/ride-burst.png"
