#!/usr/bin/env bash
# Peak memory (VmHWM) of every service while events flow through all six, for the resource
# requests and limits in deploy/ (deploy/README.md, "Resources"). Starts its own nats-server
# (JetStream) and redis-server on free ports under a temp dir, the six services on ports
# 18080-18085, a fake RudderStack data plane, and a `dev` workspace wired end to end:
#   track "Order Completed" → automations (mapping → send) → delivery (inbox provider)
#   → message statuses → forwarder → data plane; identify → profiles; group → accounts.
# Then it sends batches of 20 mixed events for SECONDS and prints idle and peak RSS.
#
#   BIN=target/release DURATION=60 RATE=2000 scripts/measure-rss.sh   # after cargo build --release --bins
#   scripts/measure-rss.sh                       # debug binaries (higher RSS), 30 s at 1,000/s
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
DURATION=${DURATION:-30}  # seconds of load
RATE=${RATE:-1000}        # events/s offered (batches of 20)
TMP=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NATS_PORT=$(free_port); REDIS_PORT=$(free_port); DP_PORT=$(free_port)
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$TMP/js" >"$TMP/nats.log" 2>&1 & pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$TMP" --appendonly yes --save "" >"$TMP/redis.log" 2>&1 & pids+=($!)
# Fake data plane: 200 to every POST /v1/batch.
python3 - "$DP_PORT" >"$TMP/dp.log" 2>&1 <<'PY' & pids+=($!)
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
export RC_NATS__URL=nats://127.0.0.1:$NATS_PORT RC_REDIS__URL=redis://127.0.0.1:$REDIS_PORT
RC_SECRETS__ENCRYPTION_KEY=$(python3 -c 'import base64,os;print(base64.b64encode(os.urandom(32)).decode())')
export RC_SECRETS__ENCRYPTION_KEY
export RC_LOG__LEVEL=warn
for _ in $(seq 1 100); do "$BIN/rc-admin" list-workspaces >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$("$BIN/rc-admin" --json ensure-workspace dev --name Dev | python3 -c 'import json,sys;print(json.load(sys.stdin)["api_key"])')

declare -A PID
for entry in ingress:18080 profiles:18081 accounts:18082 automations:18083 forwarder:18084 delivery:18085; do
  name=${entry%%:*}; port=${entry##*:}
  RC_HTTP__LISTEN=127.0.0.1:$port "$BIN/rc-$name" >"$TMP/$name.log" 2>&1 & pids+=($!); PID[$name]=$!
done
for port in 18080 18081 18082 18083 18084 18085; do
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "service on :$port not ready" >&2; tail -20 "$TMP"/*.log >&2; exit 1; }
done
api() { curl -fsS -o /dev/null -X "$1" "http://127.0.0.1:$2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d "$3"; }
api PUT 18085/providers/inbox '{"type":"inbox","channels":["inbox","email","sms","push","chat"]}'
api POST 18083/notifications/templates '{"id":"WELCOME","name":"Welcome","channels":{"email":{"title":"Welcome","body":"Hello {{userId}}"}}}'
api POST 18083/automations/templates '{"id":"welcome","name":"Welcome","steps":[{"action":"send","recipient":"refs.data.userId","template":"WELCOME"}]}'
api POST 18083/automations/mappings '{"event":"Order Completed","template_id":"welcome"}'
api PUT 18084/integrations/rudderstack "{\"writeKey\":\"measure-write-key\",\"dataPlaneUrl\":\"http://127.0.0.1:$DP_PORT\"}"
sleep 3

rss() { awk -v f="$2" '$1==f":" {printf "%.1f", $2/1024}' "/proc/$1/status"; }
declare -A IDLE
for n in "${!PID[@]}"; do IDLE[$n]=$(rss "${PID[$n]}" VmRSS); done

python3 - "$KEY" "$DURATION" "$RATE" <<'PY'
import json, sys, time, threading, urllib.request
key, seconds, rate = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
kinds = [
  lambda i: {"type": "track", "event": "Order Completed", "userId": f"u_{i % 5000}", "messageId": f"m-{i}", "properties": {"order_id": f"o{i}", "total": 42.5}},
  lambda i: {"type": "identify", "userId": f"u_{i % 5000}", "messageId": f"m-{i}", "traits": {"email": f"u{i % 5000}@example.org", "plan": "team"}},
  lambda i: {"type": "group", "userId": f"u_{i % 5000}", "groupId": f"g_{i % 200}", "messageId": f"m-{i}", "traits": {"name": f"Group {i % 200}"}},
]
sent = [0]; errors = [0]; lock = threading.Lock(); counter = [0]
def worker(stop):
    while time.time() < stop:
        with lock:
            i = counter[0]; counter[0] += 20
        body = json.dumps({"batch": [kinds[(i + k) % 3](i + k) for k in range(20)]}).encode()
        req = urllib.request.Request("http://127.0.0.1:18080/inbound/rudderstack", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        t0 = time.time()
        try:
            urllib.request.urlopen(req, timeout=10).read(); ok = True
        except Exception:
            ok = False
        with lock:
            if ok: sent[0] += 20
            else: errors[0] += 1
        # Each of the 8 workers offers rate/8 events/s.
        time.sleep(max(0.0, 20 * 8 / rate - (time.time() - t0)))
stop = time.time() + seconds
ts = [threading.Thread(target=worker, args=(stop,)) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print(f"sent {sent[0]} events in {seconds:.0f} s ({sent[0] / seconds:.0f}/s), {errors[0]} failed requests")
PY
sleep 10   # let the consumers catch up
echo "| service | idle RSS MiB | peak RSS (VmHWM) MiB |"
echo "|---|---:|---:|"
for n in ingress profiles accounts automations forwarder delivery; do
  echo "| $n | ${IDLE[$n]} | $(rss "${PID[$n]}" VmHWM) |"
done
# Evidence that every stage ran (a stage that did nothing would make its figure meaningless).
get() { curl -sS "http://127.0.0.1:$1" -H "Authorization: Bearer $KEY" | head -c 400; echo; }
echo "profiles:    $(get 18081/profiles/u_1)"
echo "accounts:    $(get 18082/tenants/g_1)"
echo "automations: $(get '18083/automations/events?limit=1')"
echo "delivery:    $(get '18085/messages?limit=1')"
echo "forwarder:   $(get 18084/integrations/rudderstack/status)"
if [ -n "${KEEP:-}" ]; then echo "logs in $TMP; Ctrl-C to stop"; wait; fi
