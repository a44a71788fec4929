#!/bin/sh
# Fake node for the plugin tests: answers the probe contract from (node, peer, method) alone.
#   NAT theory holds (n1 port-restricted, n2 symmetric): direct works only towards public nodes
#   (p*); a hole punch ends on path "punched" except between n1 and n2, where it fails; relay always
#   works. Throughput: 10 Mbps × the sender's index, relayed when n2 sends. CRDT: one shared counter.
#   FAKE_PUNCH_FALSE: p1->n1 punches answer ok=false (with a stderr line); FAKE_XPASS: n1<->n2 punches
#   work although theory says they cannot.
#   reset: answers ok (ok=false on FAKE_RESET_FAIL's node). FAKE_PROBE_LOG=FILE: connect and reset
#   each take 50 ms and append "ACTION NODE PEER START END" (seconds) to FILE, to check overlaps.
#   With FAKE_PROBE_DELAY each probe takes that long and logs, per node it touches, how many probes
#   were in flight there when it started (inflight.log: "node count"), so tests can check the limit.
#   Every call is logged to agent.calls as "single|batch ACTION NODE" (fakebatch.py sets FAKE_VIA).
action=$1; node=$2; shift 2
echo "${FAKE_VIA:-single} $action $node" >> "$FAKE_FLEET_DIR/agent.calls"
began=$(date +%s.%N)
logged() {
  [ -n "$FAKE_PROBE_LOG" ] || return 0
  sleep 0.05; echo "$1 $node $2 $began $(date +%s.%N)" >> "$FAKE_PROBE_LOG"
}
# FAKE_AGENT_DIES=node:n — that node's agent answers its first n probes, then is "not running"
# (SSH still works): every later probe says so, as the reference agent's CLI does, and connects
# to it get no answer.
if [ -n "$FAKE_AGENT_DIES" ] && [ "$node" = "${FAKE_AGENT_DIES%%:*}" ]; then
  f="$FAKE_FLEET_DIR/agent-$node.calls"
  echo x >> "$f"
  if [ "$(wc -l < "$f")" -gt "${FAKE_AGENT_DIES#*:}" ]; then
    echo "{\"ok\": false, \"node\": null, \"addresses\": null, \"method\": null, \"path\": null, \"rtt_ms\": null, \"error\": \"agent not running: no control socket at /run/agent/$node.sock\"}"
    exit 0
  fi
fi

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
reset)
  logged reset -
  if [ "$node" = "$FAKE_RESET_FAIL" ]; then
    echo "reset: peer table locked" >&2; echo '{"ok": false, "error": "peer table locked"}'
  else echo '{"ok": true}'; fi ;;
status) echo "{\"ok\": true, \"node\": \"$node\", \"addresses\": []}" ;;
connect)
  peer=$1; method=$2
  case "$method" in
  direct) case "$peer" in p*) ok=true ;; *) ok=false; echo "direct: $peer did not answer" >&2 ;; esac
    path=direct ;;
  holepunch)
    ok=true; path=punched
    case "$node-$peer" in n1-n2|n2-n1) [ -n "$FAKE_XPASS" ] || ok=false ;; esac
    if [ "$node-$peer" = p1-n1 ] && [ -n "$FAKE_PUNCH_FALSE" ]; then
      ok=false; echo "punch: no answer from $peer within 5 s (session 42)" >&2
    fi ;;
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
  logged connect "$peer"
  if [ "$ok" = false ]; then
    echo "{\"ok\": false, \"method\": \"$method\", \"path\": null, \"rtt_ms\": null, \"error\": \"no connection\"}"
  else
    echo "{\"ok\": true, \"method\": \"$method\", \"path\": \"$path\", \"rtt_ms\": 1.5, \"error\": null}"
  fi ;;
publish) echo "{\"ok\": true, \"message_id\": \"m-$node\"}" ;;
received) echo "{\"ok\": true, \"received\": true, \"latency_ms\": 12, \"duplicates\": 0}" ;;
throughput)
  case "$node" in p1) m=10 ;; p2) m=20 ;; n1) m=30 ;; *) m=40 ;; esac
  case "$node" in n2) path=relayed ;; *) path=direct ;; esac
  echo "{\"ok\": true, \"bytes\": 1000, \"seconds\": 1, \"mbps\": $m, \"path\": \"$path\"}" ;;
crdt)
  amount=$1; f="$FAKE_FLEET_DIR/crdt"
  exec 9>> "$f.lock"; flock 9  # nodes are asked at the same time: one update at a time
  [ -f "$f" ] || echo 0 > "$f"
  v=$(( $(cat "$f") + amount )); echo "$v" > "$f"
  echo "{\"ok\": true, \"value\": $v, \"digest\": \"d$v\"}" ;;
esac
