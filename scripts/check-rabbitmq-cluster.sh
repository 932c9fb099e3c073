#!/usr/bin/env bash
# check-rabbitmq-cluster.sh - the scale-out path, for real (docs/operations.md, "Scaling out"; run by .ci/run):
#  1. a three-node RabbitMQ cluster on 127.0.0.1 (scripts/rabbitmq-cluster.sh);
#  2. brokerd's definitions (the ride services' topology, as the services declare it) exported with
#     `brokerctl definitions export --rabbitmq` and imported with `rabbitmqctl import_definitions`: the durable
#     queues arrive as quorum queues;
#  3. BrokerClient through a quorum queue while a node stops (RabbitMQClusterTests).
# Needs the built products (swift build --build-tests); installs rabbitmq-server if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    apt-get update -qq && apt-get install -y -qq rabbitmq-server
fi
bin=$(swift build --show-bin-path)
d=$(mktemp -d /tmp/brokerd-rmq-cluster.XXXXXX)
export BASE_PORT=${BASE_PORT:-5772}
brokerd_pid=
cleanup() {
    [ -n "$brokerd_pid" ] && kill -TERM "$brokerd_pid" 2>/dev/null && wait "$brokerd_pid" 2>/dev/null || true
    scripts/rabbitmq-cluster.sh stop "$d" || true
    rm -rf "$d"
}
trap cleanup EXIT

echo "starting a three-node RabbitMQ cluster in $d ..."
time scripts/rabbitmq-cluster.sh start "$d"
scripts/rabbitmq-cluster.sh ctl "$d" 1 -q cluster_status | grep -q "brokerd-test-3@localhost" || {
    echo "the nodes did not form one cluster" >&2; scripts/rabbitmq-cluster.sh ctl "$d" 1 cluster_status >&2; exit 1; }

# 2. brokerd's definitions into the cluster.
"$bin/brokerd" --port 0 --data-dir "$d/brokerd" --log-target stderr 2> "$d/brokerd.log" &
brokerd_pid=$!
port=
for _ in $(seq 1 100); do
    port=$(sed -n 's/.*brokerd ready.* port=\([0-9]*\).*/\1/p' "$d/brokerd.log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "brokerd did not start" >&2; cat "$d/brokerd.log" >&2; exit 1; }
"$bin/brokerctl" declare exchange ride.trips --type topic --durable --port "$port" >/dev/null
"$bin/brokerctl" declare queue dispatcher.trips --durable --port "$port" >/dev/null
"$bin/brokerctl" declare queue notification.requests --durable --port "$port" >/dev/null
"$bin/brokerctl" bind ride.trips dispatcher.trips --routing-key trip.requested --port "$port" >/dev/null
"$bin/brokerctl" definitions export --rabbitmq "$d/rabbitmq-definitions.json" --port "$port"
scripts/rabbitmq-cluster.sh ctl "$d" 2 -q import_definitions "$d/rabbitmq-definitions.json"
types=$(scripts/rabbitmq-cluster.sh ctl "$d" 2 -q list_queues name type --no-table-headers | sort)
echo "$types"
echo "$types" | grep -Eq '^dispatcher\.trips[[:space:]]+quorum$' || { echo "dispatcher.trips is not a quorum queue in the cluster" >&2; exit 1; }
echo "$types" | grep -Eq '^notification\.requests[[:space:]]+quorum$' || { echo "notification.requests is not a quorum queue" >&2; exit 1; }
scripts/rabbitmq-cluster.sh ctl "$d" 3 -q list_bindings source_name destination_name routing_key | grep -q "ride.trips.*dispatcher.trips.*trip.requested" \
    || { echo "the binding did not arrive" >&2; exit 1; }
# Leave the cluster as the next step expects it (the ride services declare these queues with other arguments).
for queue in dispatcher.trips notification.requests; do scripts/rabbitmq-cluster.sh ctl "$d" 1 -q delete_queue "$queue" >/dev/null; done

# 3. BrokerClient through a quorum queue of the cluster while a node stops.
export BROKERD_RABBITMQ_CLUSTER="$d" BROKERD_RABBITMQ_BASE_PORT="$BASE_PORT"
# A filter that matches nothing passes: each run must have run its one test.
for suite in RabbitMQClusterTests; do
    swift test --skip-build --filter "$suite" 2>&1 | tee "$d/$suite.log"
    grep -q "Test run with 1 test in 1 suite passed" "$d/$suite.log" || { echo "$suite did not run and pass" >&2; exit 1; }
done
echo "scale-out check passed"
