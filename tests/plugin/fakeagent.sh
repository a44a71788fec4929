#!/bin/sh
# Fake node for the plugin tests: answers the probe contract from (node, peer, method) alone.
#   direct: works only towards public nodes (p*); holepunch: fails when n2 (symmetric) is involved;
#   relay: always works. Throughput: 10 Mbps × the sender's index. CRDT: one shared counter.
action=$1; node=$2; shift 2
# FAKE_AGENT_DIES=node:n — that node's agent answers its first n probes, then is "not running"
# (SSH still works): every later probe says so, as the reference agent's CLI does, and connects
# to it get no answer.
if [ -n "$FAKE_AGENT_DIES" ] && [ "$node" = "${FAKE_AGENT_DIES%%:*}" ]; then
  f="$FAKE_FLEET_DIR/agent-$node.calls"
  echo x >> "$f"
  if [ "$(wc -l < "$f")" -gt "${FAKE_AGENT_DIES#*:}" ]; then
    echo "{\"ok\": false, \"method\": null, \"path\": null, \"rtt_ms\": null, \"error\": \"agent not running: no control socket at /run/agent/$node.sock\"}"
    exit 0
  fi
fi
case "$action" in
status) echo "{\"ok\": true, \"node\": \"$node\", \"addresses\": []}" ;;
connect)
  peer=$1; method=$2
  case "$method" in
  direct) case "$peer" in p*) ok=true ;; *) ok=false ;; esac; path=direct ;;
  holepunch) if [ "$node" = n2 ] || [ "$peer" = n2 ]; then ok=false; else ok=true; fi; path=direct ;;
  relay) ok=true; path=relayed; if [ "$node" = p1 ] && [ -n "$FAKE_RELAY_DOWN" ]; then ok=false; fi ;;
  esac
  dead="$FAKE_FLEET_DIR/agent-$peer.calls"
  if [ "$peer" = "${FAKE_AGENT_DIES%%:*}" ] && [ -f "$dead" ] && [ "$(wc -l < "$dead")" -gt "${FAKE_AGENT_DIES#*:}" ]; then
    echo "{\"ok\": false, \"method\": \"$method\", \"path\": null, \"rtt_ms\": null, \"error\": \"no answer from $peer\"}"
    exit 0
  fi
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
