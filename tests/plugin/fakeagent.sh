#!/bin/sh
# Fake node for the plugin tests: answers the probe contract from (node, peer, method) alone.
#   direct: works only towards public nodes (p*); holepunch: fails when n2 (symmetric) is involved;
#   relay: always works. Throughput: 10 Mbps × the sender's index. CRDT: one shared counter.
#   With FAKE_PROBE_DELAY each probe takes that long and logs, per node it touches, how many probes
#   were in flight there when it started (inflight.log: "node count"), so tests can check the limit.
action=$1; node=$2; shift 2

track() {
  [ -n "$FAKE_PROBE_DELAY" ] || return 0
  d="$FAKE_FLEET_DIR/inflight"; mkdir -p "$d"
  for n in "$@"; do : > "$d/$n.$$"; done
  for n in "$@"; do echo "$n $(ls "$d" | grep -c "^$n\\.")" >> "$FAKE_FLEET_DIR/inflight.log"; done
  sleep "$FAKE_PROBE_DELAY"
  for n in "$@"; do rm -f "$d/$n.$$"; done
}
case "$action" in
connect|throughput) track "$node" "$1" ;;
*) track "$node" ;;
esac
case "$action" in
status) echo "{\"ok\": true, \"node\": \"$node\", \"addresses\": []}" ;;
connect)
  peer=$1; method=$2
  case "$method" in
  direct) case "$peer" in p*) ok=true ;; *) ok=false ;; esac; path=direct ;;
  holepunch) if [ "$node" = n2 ] || [ "$peer" = n2 ]; then ok=false; else ok=true; fi; path=direct ;;
  relay) ok=true; path=relayed; if [ "$node" = p1 ] && [ -n "$FAKE_RELAY_DOWN" ]; then ok=false; fi ;;
  esac
  if [ "$node" = p1 ] && [ "$peer" = p2 ] && [ "$method" = direct ] && [ -n "$FAKE_HANG" ]; then
    exec sleep 60
  fi
  if [ "$node" = p1 ] && [ "$peer" = p2 ] && [ "$method" = direct ] && [ -n "$FAKE_GARBAGE" ]; then
    echo "segfault"; exit 139
  fi
  echo "{\"ok\": $ok, \"method\": \"$method\", \"path\": \"$path\", \"rtt_ms\": 1.5, \"error\": null}" ;;
publish) echo "{\"ok\": true, \"message_id\": \"m-$node\"}" ;;
received) echo "{\"ok\": true, \"received\": true, \"latency_ms\": 12, \"duplicates\": 0}" ;;
throughput)
  case "$node" in p1) m=10 ;; p2) m=20 ;; n1) m=30 ;; *) m=40 ;; esac
  echo "{\"ok\": true, \"bytes\": 1000, \"seconds\": 1, \"mbps\": $m}" ;;
crdt)
  amount=$1; f="$FAKE_FLEET_DIR/crdt"
  [ -f "$f" ] || echo 0 > "$f"
  v=$(( $(cat "$f") + amount )); echo "$v" > "$f"
  echo "{\"ok\": true, \"value\": $v, \"digest\": \"d$v\"}" ;;
esac
