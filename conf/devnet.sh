#!/bin/sh
# The seed's three-node walk-through on loopback, in the background:
#   node A  RPC :8080  P2P :9090  timelord + farmer
#   node B  RPC :8081  P2P :9091  peers A
#   node C  RPC :8082  P2P :9092  peers A, B
# Logs, pids, the farmer key and plots under one folder ($2, default ./devnet); each
# network's databases in a folder of their own ($2/<network>/A-data ...).
#   sh conf/devnet.sh start [DIR]    (make devnet)
#   sh conf/devnet.sh stop [DIR]     (make devnet-stop)
# Each node must answer GET /healthz (as our process, on our network) within DEVNET_WAIT
# seconds before the next starts; if one does not, the nodes this run started are stopped
# and the script exits 1 naming the node and the cause (a busy port, its log's last lines).
# Environment (defaults in brackets): BIN [.venv/bin], NETWORK [devnet], DEVNET_HOST
# [127.0.0.1], DEVNET_RPC_A/_B/_C [8080 8081 8082], DEVNET_P2P_A/_B/_C [9090 9091 9092],
# DEVNET_WAIT [60], DEVNET_STOP_WAIT [30] (seconds stop waits for a node to exit).
set -eu
action=${1:?start or stop}
dir=${2:-devnet}
bin=${BIN:-.venv/bin}
network=${NETWORK:-devnet}
host=${DEVNET_HOST:-127.0.0.1}
wait_s=${DEVNET_WAIT:-60}
stop_wait=${DEVNET_STOP_WAIT:-30}
rpc_A=${DEVNET_RPC_A:-8080} rpc_B=${DEVNET_RPC_B:-8081} rpc_C=${DEVNET_RPC_C:-8082}
p2p_A=${DEVNET_P2P_A:-9090} p2p_B=${DEVNET_P2P_B:-9091} p2p_C=${DEVNET_P2P_C:-9092}
started=""  # the nodes this run started, stopped again if a later one fails

if [ -x "$bin/python" ]; then python=$bin/python; else python=python3; fi

fail() {  # message...: stop what this run started, then exit 1
	echo "devnet: $*" >&2
	for name in $started; do stop_node "$name" >/dev/null; done
	exit 1
}

port_in_use() {  # port: prints the reason and succeeds when something listens there
	"$python" - "$host" "$1" <<-'EOF'
	import socket, sys
	s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
	s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
	try:
	    s.bind((sys.argv[1], int(sys.argv[2])))
	except OSError as e:
	    print(e.strerror)
	    sys.exit(0)
	sys.exit(1)
	EOF
}

wait_healthy() {  # pid rpc-port: 0 healthy, 1 exited, 2 no answer in time
	"$python" - "$1" "http://$host:$2/healthz" "$wait_s" "$network" <<-'EOF'
	import json, os, sys, time, urllib.request
	pid, url, wait, network = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
	deadline = time.monotonic() + wait
	def running():  # a node that exited stays a zombie until sh waits for it
	    try:
	        with open(f"/proc/{pid}/stat") as f:
	            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
	    except FileNotFoundError:
	        return False
	    except OSError:  # no /proc: ask the kernel
	        try:
	            os.kill(pid, 0)
	            return True
	        except ProcessLookupError:
	            return False
	while time.monotonic() < deadline:
	    if not running():
	        sys.exit(1)
	    try:
	        with urllib.request.urlopen(url, timeout=2) as r:
	            body = json.load(r)
	        if body.get("ok") and body.get("network") == network and running():
	            sys.exit(0)
	    except (OSError, ValueError):
	        pass
	    time.sleep(0.2)
	sys.exit(2)
	EOF
}

stop_node() {  # name: SIGTERM, then wait for it to close its database
	if [ -f "$dir/$1.pid" ]; then
		pid=$(cat "$dir/$1.pid")
		if kill "$pid" 2>/dev/null; then
			n=0
			while kill -0 "$pid" 2>/dev/null && [ "$n" -lt $((stop_wait * 5)) ]; do
				sleep 0.2
				n=$((n + 1))
			done
			echo "stopped node $1"
		fi
		rm -f "$dir/$1.pid"
	fi
}

log_tail() {  # name
	tail -n 5 "$dir/$1.log" 2>/dev/null | sed 's/^/    /'
}

start_node() {  # name rpc p2p extra-args...
	name=$1 rpc=$2 p2p=$3
	shift 3
	if [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then
		echo "node $name already running (pid $(cat "$dir/$name.pid"))"
		pid=$(cat "$dir/$name.pid")
	else
		for port in "$rpc" "$p2p"; do
			if why=$(port_in_use "$port"); then
				kind=RPC var=DEVNET_RPC_$name
				[ "$port" = "$p2p" ] && kind=P2P var=DEVNET_P2P_$name
				fail "node $name cannot start: its $kind port $host:$port is in use ($why);" \
					"stop what listens there or choose another port with $var=..."
			fi
		done
		"$bin/archivas-node" --network "$network" --db "$dir/$network/$name-data" \
			--rpc-port "$host:$rpc" --p2p-port "$host:$p2p" "$@" </dev/null >"$dir/$name.log" 2>&1 &
		pid=$!
		echo "$pid" >"$dir/$name.pid"
		started="$name $started"
	fi
	status=0
	wait_healthy "$pid" "$rpc" || status=$?
	case $status in
	0) echo "node $name: pid $pid, RPC http://$host:$rpc, P2P $host:$p2p, log $dir/$name.log" ;;
	1) fail "node $name exited before its RPC answered; the last lines of $dir/$name.log:
$(log_tail "$name")" ;;
	*) fail "node $name did not answer http://$host:$rpc/healthz within $wait_s s (stopped);" \
		"the last lines of $dir/$name.log:
$(log_tail "$name")" ;;
	esac
}

case $action in
start)
	mkdir -p "$dir/$network"
	[ -f "$dir/farmer.key" ] || "$bin/archivas-wallet" new --out "$dir/farmer.key" >/dev/null
	ls "$dir"/plots/*.plot >/dev/null 2>&1 ||
		"$bin/archivas-farmer" plot --size 18 --count 2 --path "$dir/plots" --farmer-key "$dir/farmer.key" >/dev/null
	start_node A "$rpc_A" "$p2p_A" --timelord --farm "$dir/plots" --farmer-key "$dir/farmer.key"
	start_node B "$rpc_B" "$p2p_B" --peers "$host:$p2p_A"
	start_node C "$rpc_C" "$p2p_C" --peers "$host:$p2p_A,$host:$p2p_B"
	echo "farmer address: $(grep -o '"address": "[^"]*"' "$dir/farmer.key" | cut -d'"' -f4)"
	echo "stop with: make devnet-stop"
	;;
stop)
	for name in A B C; do stop_node "$name"; done
	;;
*)
	echo "usage: $0 start|stop [DIR]" >&2
	exit 2
	;;
esac
