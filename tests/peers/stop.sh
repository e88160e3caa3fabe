#!/bin/bash
# stop.sh ROOT -- stops the Dovecot and Postfix that start.sh ROOT started (by their pid files)
# and waits until they are gone, so that a new start.sh can bind the same ports.
R=${1:?usage: stop.sh ROOT}
postfix -c "$R/postfix" stop </dev/null >/dev/null 2>&1 || true   # signals $R/postfix-spool/pid/master.pid
pids=""
for f in "$R/dovecot-run/master.pid" "$R/postfix-spool/pid/master.pid"; do
  [ -s "$f" ] && pids="$pids $(tr -d ' ' < "$f")"
done
dpid=$(cat "$R/dovecot-run/master.pid" 2>/dev/null || true)
[ -n "$dpid" ] && kill "$dpid" 2>/dev/null || true
for pid in $pids; do                                   # up to 10 s each, then force
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || continue 2; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0
