#!/usr/bin/env bash
# Start the lab's load balancer: nginx, a Serf agent and lbsync (the `lbsync run` daemon, or with
# LAB_MODE=hook Serf's event handler), with three pools: web (HTTP, $LB_IP:$HTTP_PORT), api (HTTP,
# $LB_IP:$API_PORT) and cache (TCP, $LB_IP:$TCP_PORT). nginx listens on them once lbsync's first
# run has rendered the pools. Safe to re-run: what is already running is left alone.
set -euo pipefail
. "$(dirname "$0")/env.sh"
require serf nginx
mkdir -p "$LAB_DIR/lb" "$LAB_DIR/nginx"

if ! tool alive "$LAB_DIR/lb/serf.pid"; then  # choose ports now; later scripts read lab.env
    LB_SERF_PORT=$(tool free-port "$LB_IP" "$LB_SERF_PORT")
    LB_RPC_PORT=$(tool free-port "$LB_IP" "$LB_RPC_PORT")
    if ! tool alive "$LAB_DIR/nginx/nginx.pid"; then  # the pools' listeners
        HTTP_PORT=$(tool free-port "$LB_IP" "$HTTP_PORT")
        API_PORT=$(tool free-port "$LB_IP" "$API_PORT")
        TCP_PORT=$(tool free-port "$LB_IP" "$TCP_PORT")
    fi
    STATUS_PORT=$(tool free-port "$LB_IP" "$STATUS_PORT")
    printf '%s\n' "LB_IP=$LB_IP" "LB_SERF_PORT=$LB_SERF_PORT" "LB_RPC_PORT=$LB_RPC_PORT" \
        "HTTP_PORT=$HTTP_PORT" "API_PORT=$API_PORT" "TCP_PORT=$TCP_PORT" "STATUS_PORT=$STATUS_PORT" \
        "LAB_NET=$LAB_NET" "LAB_MODE=$LAB_MODE" > "$LAB_DIR/lab.env"
else
    running=$(sed -n 's/^LAB_MODE=//p' "$LAB_DIR/lab.env" 2>/dev/null)
    [ "${running:-hook}" = "$LAB_MODE" ] ||
        die "the LB runs in ${running:-hook} mode: lab/down.sh first to switch to $LAB_MODE"
fi
tool lb-config "$LAB_DIR"
export LBSYNC_CONFIG="$LAB_DIR/lb/lbsync.toml"
NGINX=(nginx -p "$LAB_DIR/nginx" -c "$LAB_DIR/nginx/nginx.conf" -e stderr)

if tool alive "$LAB_DIR/nginx/nginx.pid"; then
    echo "nginx is already running (pid $(cut -d' ' -f1 "$LAB_DIR/nginx/nginx.pid"))"
else
    show "${NGINX[@]}"
    "${NGINX[@]}"  # daemonises; writes $LAB_DIR/nginx/nginx.pid; no pool listens before lbsync's first run
fi

HANDLER="'$PYTHON' -m lbsync handle 2>>'$LAB_DIR/lb/lbsync.log'"
SERF=(serf agent -node lb -bind "$LB_IP:$LB_SERF_PORT" -rpc-addr "$LB_IP:$LB_RPC_PORT"
      -tag role=lb -config-file "$LAB_DIR/lb/serf.json")
[ "$LAB_MODE" = hook ] && SERF+=(-event-handler "$HANDLER")
if tool alive "$LAB_DIR/lb/serf.pid"; then
    echo "the LB's serf agent is already running"
else
    show "${SERF[@]}"
    tool spawn "$LAB_DIR/lb/serf.pid" "$LAB_DIR/lb/serf.log" -- "${SERF[@]}"
    tool wait-port "$LB_IP" "$LB_RPC_PORT" --pidfile "$LAB_DIR/lb/serf.pid" --timeout 15 \
        --what "the LB's serf agent"
fi

case "$LAB_MODE" in
    hook) "$PYTHON" -m lbsync sync 2>>"$LAB_DIR/lb/lbsync.log" ;;  # render the pool Serf knows now
    run)
        [ -f "$REPO/lbsync/daemon.py" ] || die "LAB_MODE=run needs lbsync/daemon.py (lbsync run)"
        tool alive "$LAB_DIR/lb/daemon.pid" ||
            tool spawn "$LAB_DIR/lb/daemon.pid" "$LAB_DIR/lb/lbsync.log" -- "$PYTHON" -m lbsync run ;;
    *) die "LAB_MODE must be hook or run, not $LAB_MODE" ;;
esac
# an HTTP answer, not just a port that accepts: nginx -t listens on it while lbsync checks the config
tool wait-http "$LB_IP" "$HTTP_PORT" --timeout 30 --what "nginx on port $HTTP_PORT (the web pool, once lbsync rendered it)" ||
    die "no pool is listening: see lbsync's log, $LAB_DIR/lb/lbsync.log"

cat <<INFO
LB up ($LAB_MODE mode):  serf $LB_IP:$LB_SERF_PORT (rpc $LB_IP:$LB_RPC_PORT)
  pools: web http://$LB_IP:$HTTP_PORT/   api http://$LB_IP:$API_PORT/   cache (TCP) $LB_IP:$TCP_PORT
  state and logs: $LAB_DIR   (lbsync's log: $LAB_DIR/lb/lbsync.log)
  next: lab/boot_web.sh 1
INFO
