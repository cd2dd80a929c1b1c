#!/bin/sh
# The seed's three-node walk-through on loopback, in the background:
#   node A  RPC :8080  P2P :9090  timelord + farmer
#   node B  RPC :8081  P2P :9091  peers A
#   node C  RPC :8082  P2P :9092  peers A, B
# Logs, pids, keys, plots and databases under one folder ($2, default ./devnet).
#   sh conf/devnet.sh start [DIR]    (make devnet)
#   sh conf/devnet.sh stop [DIR]     (make devnet-stop)
set -eu
action=${1:?start or stop}
dir=${2:-devnet}
bin=${BIN:-.venv/bin}
network=${NETWORK:-devnet}

start_node() {  # name rpc p2p extra-args...
	name=$1 rpc=$2 p2p=$3
	shift 3
	if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
		echo "node $name already running (pid $(cat "$dir/$name.pid"))"
		return
	fi
	"$bin/archivas-node" --network "$network" --db "$dir/$name-data" \
		--rpc-port "127.0.0.1:$rpc" --p2p-port "127.0.0.1:$p2p" "$@" >"$dir/$name.log" 2>&1 &
	echo $! >"$dir/$name.pid"
	echo "node $name: pid $!, RPC http://127.0.0.1:$rpc, log $dir/$name.log"
}

case $action in
start)
	mkdir -p "$dir"
	[ -f "$dir/farmer.key" ] || "$bin/archivas-wallet" new --out "$dir/farmer.key" >/dev/null
	ls "$dir"/plots/*.plot >/dev/null 2>&1 ||
		"$bin/archivas-farmer" plot --size 18 --count 2 --path "$dir/plots" --farmer-key "$dir/farmer.key" >/dev/null
	start_node A 8080 9090 --timelord --farm "$dir/plots" --farmer-key "$dir/farmer.key"
	start_node B 8081 9091 --peers 127.0.0.1:9090
	start_node C 8082 9092 --peers 127.0.0.1:9090,127.0.0.1:9091
	echo "farmer address: $(grep -o '"address": "[^"]*"' "$dir/farmer.key" | cut -d'"' -f4)"
	echo "stop with: make devnet-stop"
	;;
stop)
	for name in A B C; do
		if [ -f "$dir/$name.pid" ]; then
			kill "$(cat "$dir/$name.pid")" 2>/dev/null && echo "stopped node $name" || true
			rm -f "$dir/$name.pid"
		fi
	done
	;;
*)
	echo "usage: $0 start|stop [DIR]" >&2
	exit 2
	;;
esac
