#!/usr/bin/env bash
# rabbitmq-cluster.sh - a throwaway three-node RabbitMQ cluster on this machine (Debian's rabbitmq-server), for
# the scale-out test (docs/operations.md, "Scaling out"). Everything listens on 127.0.0.1 only; node names,
# AMQP ports, distribution ports and the epmd port are distinct from a default RabbitMQ's, so it runs beside one.
#
#   scripts/rabbitmq-cluster.sh start DIR     # boots three nodes in DIR, joins them; prints the AMQP ports
#   scripts/rabbitmq-cluster.sh ctl DIR N ARGS...   # rabbitmqctl against node N (1..3)
#   scripts/rabbitmq-cluster.sh stop-node DIR N     # stops node N (the others keep the cluster)
#   scripts/rabbitmq-cluster.sh start-node DIR N    # starts node N again (it rejoins its cluster)
#   scripts/rabbitmq-cluster.sh stop DIR      # stops every node and the epmd this script started
#
# Knobs: BASE_PORT (5772: nodes listen on BASE_PORT+1..3 for AMQP, BASE_PORT+20001..3 for distribution),
# EPMD_PORT (4399). Only processes this script started are stopped, by the PIDs it wrote.
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin
BASE_PORT=${BASE_PORT:-5772}
EPMD_PORT=${EPMD_PORT:-4399}

node_env() {
    local d=$1 n=$2
    local nd="$d/node$n"
    export HOME="$d"                                   # the shared .erlang.cookie lives here
    export RABBITMQ_NODENAME="brokerd-test-$n@localhost"
    export RABBITMQ_USE_LONGNAME=false
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$((BASE_PORT + n))
    export RABBITMQ_DIST_PORT=$((BASE_PORT + 20000 + n))
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$EPMD_PORT
    export RABBITMQ_MNESIA_BASE="$nd/mnesia"
    export RABBITMQ_LOG_BASE="$nd/log"
    export RABBITMQ_CONF_ENV_FILE="$nd/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$nd/rabbitmq"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$nd/enabled_plugins"
    export RABBITMQ_PID_FILE="$nd/rabbit.pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() {
    local d=$1 n=$2; shift 2
    ( node_env "$d" "$n"; timeout 120 "$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@" )
}

start_node() {
    local d=$1 n=$2
    local nd="$d/node$n"
    mkdir -p "$nd/log" "$nd/mnesia"
    ( node_env "$d" "$n"
      : > "$nd/rabbitmq-env.conf"
      echo '[].' > "$nd/enabled_plugins"
      cat > "$nd/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_NODE_PORT
loopback_users.guest = true
log.file.level = warning
log.console = false
EOF
      setsid "$RMQ_BIN/rabbitmq-server" > "$nd/log/stdout.log" 2> "$nd/log/stderr.log" < /dev/null &
      echo $! > "$nd/server.pid" )
}

await_node() {
    local d=$1 n=$2 end=$((SECONDS + 180))
    while [ "$SECONDS" -lt "$end" ]; do
        if ctl "$d" "$n" -q await_startup --timeout 30 >/dev/null 2>&1; then return 0; fi
        kill -0 "$(cat "$d/node$n/server.pid")" 2>/dev/null || break
        sleep 1
    done
    echo "rabbitmq node $n did not start; see $d/node$n/log" >&2
    return 1
}

case "${1:-}" in
start)
    d=${2:?directory}
    mkdir -p "$d"
    if [ ! -f "$d/.erlang.cookie" ]; then
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' > "$d/.erlang.cookie"
        chmod 400 "$d/.erlang.cookie"
    fi
    if ! (exec 3<>/dev/tcp/127.0.0.1/"$EPMD_PORT") 2>/dev/null; then
        epmd -address 127.0.0.1 -port "$EPMD_PORT" -daemon
        sleep 0.3
        pgrep -f "epmd -address 127.0.0.1 -port $EPMD_PORT" -n > "$d/epmd.pid" || true
    fi
    for n in 1 2 3; do start_node "$d" "$n"; done
    for n in 1 2 3; do await_node "$d" "$n"; done
    for n in 2 3; do
        ctl "$d" "$n" -q stop_app
        ctl "$d" "$n" -q join_cluster "brokerd-test-1@localhost"
        ctl "$d" "$n" -q start_app
    done
    ctl "$d" 1 -q await_online_nodes 3 --timeout 60 2>/dev/null || true
    echo "$((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3))"
    ;;
ctl)
    d=${2:?directory}; n=${3:?node}; shift 3
    ctl "$d" "$n" "$@"
    ;;
start-node)
    d=${2:?directory}; n=${3:?node}
    start_node "$d" "$n"
    await_node "$d" "$n"
    ;;
stop-node)
    d=${2:?directory}; n=${3:?node}
    ctl "$d" "$n" -q stop "$d/node$n/rabbit.pid" >/dev/null 2>&1 || true
    ;;
stop)
    d=${2:?directory}
    for n in 3 2 1; do
        [ -f "$d/node$n/rabbit.pid" ] && { ctl "$d" "$n" -q stop "$d/node$n/rabbit.pid" >/dev/null 2>&1 || true; }
        spid=$(cat "$d/node$n/server.pid" 2>/dev/null || true)
        if [ -n "$spid" ] && kill -0 "$spid" 2>/dev/null; then kill "$spid" 2>/dev/null || true; fi
    done
    epid=$(cat "$d/epmd.pid" 2>/dev/null || true)
    if [ -n "$epid" ] && [ "$(cat /proc/"$epid"/comm 2>/dev/null)" = "epmd" ]; then kill "$epid" 2>/dev/null || true; fi
    ;;
*)
    echo "usage: $0 start DIR | ctl DIR N args... | stop-node DIR N | start-node DIR N | stop DIR" >&2
    exit 64
    ;;
esac
