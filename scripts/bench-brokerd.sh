#!/usr/bin/env bash
# bench-brokerd.sh - build brokerd and brokerbench in release mode, start a throwaway brokerd on 127.0.0.1 in a
# temporary data directory, run the scenarios S1..S5 of docs/benchmarks.md (REPS times each), stop the broker,
# and print a summary with ../shared/bench-rabbitmq/summarize.py.
#
#   scripts/bench-brokerd.sh [RESULTS_FILE]
#
# Knobs: REPS (3), DUR (10 s per run), SCENARIOS ("S1 S2 S3 S4 S5"), PORT (5690), BROKERD_ARGS (extra flags
# for brokerd, e.g. "--memory-limit 128000000"), CLIENT (brokerbench, the native protocol; or amqp_bench: the
# same scenarios over brokerd's AMQP 0-9-1 listener on AMQP_PORT (5691), with ../shared/bench-rabbitmq's tool,
# which takes the same long options, exactly as run-rabbitmq.sh drives RabbitMQ).
# The scenario parameters are those of ../shared/bench-rabbitmq/run-rabbitmq.sh, with brokerbench's long option
# names, so every label means the same workload on both brokers. Every run is bounded by brokerbench's own
# duration limits and by `timeout`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3}
DUR=${DUR:-10}
SCENARIOS=${SCENARIOS:-"S1 S2 S3 S4 S5"}
PORT=${PORT:-5690}
AMQP_PORT=${AMQP_PORT:-5691}
CLIENT=${CLIENT:-brokerbench}
results=${RESULTS_DIR:-/tmp/bench-results}; mkdir -p "$results"
out=${1:-$results/brokerd-$(date +%Y%m%d-%H%M%S).txt}
: > "$out"

(cd "$here" && swift build -c release --product brokerd >&2)
if [ "$CLIENT" = brokerbench ]; then (cd "$here" && swift build -c release --product brokerbench >&2); fi
bin="$here/.build/release"
case $CLIENT in
brokerbench) B="$bin/brokerbench"; BENCH_PORT=$PORT ;;
amqp_bench)
    make -C "$here/../shared/bench-rabbitmq" -s amqp_bench >&2
    B="$here/../shared/bench-rabbitmq/amqp_bench"; BENCH_PORT=$AMQP_PORT
    BROKERD_ARGS="${BROKERD_ARGS:-} --amqp-port $AMQP_PORT"
    ;;
*) echo "CLIENT must be brokerbench or amqp_bench" >&2; exit 64 ;;
esac

d=$(mktemp -d /tmp/brokerdbench.XXXXXX)
"$bin/brokerd" --port "$PORT" --data-dir "$d/data" --log-level warning ${BROKERD_ARGS:-} 2> "$d/brokerd.log" &
pid=$!
cleanup() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT
for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$BENCH_PORT") 2>/dev/null && break
    sleep 0.1
done
tck=$(getconf CLK_TCK)
echo "# brokerd $(cd "$here" && git rev-parse --short HEAD) client=$CLIENT nproc=$(nproc) cpu=\"$(lscpu | sed -n 's/^Model name: *//p')\" date=$(date -u +%FT%TZ)" >> "$out"

cpu_ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$pid/status"; }

# run_once REP LABEL brokerbench-args... : one run; appends its RESULT line with the broker's CPU time and peak RSS.
run_once() {
    local r=$1 label=$2; shift 2
    {
        local c0 c1 line peak
        c0=$(cpu_ticks)
        timeout 300 "$B" --port "$BENCH_PORT" --label "$label" "$@" > "$d/run.txt" &
        local bp=$!
        peak=$(rss_kb)
        while kill -0 "$bp" 2>/dev/null; do
            v=$(rss_kb); [ "$v" -gt "$peak" ] && peak=$v
            sleep 0.25
        done
        wait "$bp" || echo "WARN: $label rep $r exited non-zero" >&2
        c1=$(cpu_ticks)
        line="$(grep '^RESULT' "$d/run.txt") rep=$r broker_cpu_secs=$(awk -v a="$c0" -v b="$c1" -v t="$tck" 'BEGIN{printf "%.2f",(b-a)/t}') broker_rss_peak_kb=$peak"
        echo "$line" >> "$out"
        echo "$line" | tr ' ' '\n' | grep -E '^(label|pub_rate|cons_rate|e2e_p50_us|e2e_p99_us|confirm_p50_us|broker_cpu_secs|broker_rss_peak_kb|failed)=' | tr '\n' ' ' >&2
        echo >&2
        sleep 1
    }
}

# run LABEL brokerbench-args... : REPS repetitions.
run() {
    local label=$1; shift
    for r in $(seq 1 "$REPS"); do run_once "$r" "$label" "$@"; done
}

for s in $SCENARIOS; do
case $s in
S1)
    for size in 16 1024; do
        run "S1-${size}B-autoack" --size $size --duration "$DUR"
        run "S1-${size}B-ack100" --size $size --duration "$DUR" --prefetch 1000 --ack-every 100
    done
    ;;
S2)
    run "S2-persist-confirm1000-ack1" --size 1024 --durable --persistent --confirm 1000 --prefetch 1000 --ack-every 1 --duration "$DUR"
    run "S2-persist-confirm1000-ack100" --size 1024 --durable --persistent --confirm 1000 --prefetch 1000 --ack-every 100 --duration "$DUR"
    ;;
S3)
    run "S3-fanout4-256B" --size 256 --queues 4 --producers 1 --consumers 4 --prefetch 1000 --ack-every 100 --duration "$DUR"
    ;;
S4)
    run "S4-persist-confirm-5000mps" --size 1024 --durable --persistent --confirm 1000 --prefetch 1000 --ack-every 1 --rate 5000 --duration "$DUR"
    ;;
S5)
    # Burst: 1M x 1 KiB into a queue with no consumer, then drain it.
    for r in $(seq 1 "$REPS"); do
        run_once "$r" "S5-burst-publish" --prefix s5 --size 1024 --producers 1 --consumers 0 --count 1000000 --duration 45 --keep
        run_once "$r" "S5-drain" --prefix s5 --size 1024 --producers 0 --consumers 1 --prefetch 1000 --ack-every 100 --count 1000000 --duration 45 --idle-ms 3000
    done
    ;;
*) echo "unknown scenario $s" >&2 ;;
esac
done

echo "raw results: $out" >&2
python3 "$here/../shared/bench-rabbitmq/summarize.py" "$out" 2>/dev/null || grep '^RESULT' "$out"
