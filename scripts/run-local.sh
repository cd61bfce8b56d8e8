#!/usr/bin/env bash
# `make run`: the whole local stack. Real nats-server (JetStream, data in .data/nats) and
# redis-server (AOF, data in .data/redis) unless NATS_URL / REDIS_URL are given, then every
# service, then the front door (nginx: one base URL routing every public path as the Kubernetes
# Ingress does), then the `dev` workspace. Ctrl-C stops everything: services first, then the
# front door, NATS and Redis.
#
#   DEV_API_KEY=...   use this key for the dev workspace (else one is generated and kept in
#                     .data/dev_api_key)
#   DURABLE=1         nats-server fsyncs before every ack (sync_interval: always)
#   CLUSTER=1         a 3-node JetStream cluster (R3 streams, ports 4222-4224, data in
#                     .data/nats-cluster) and a Redis Cluster of 3 primaries + 3 replicas
#                     (ports 7000-7005, data in .data/redis-cluster), WAIT for 1 replica
#   PROFILE=dev       build without optimizations (faster to build)
#   SKIP_BUILD=1      run the binaries already built for PROFILE
#   BIN_DIR=...       take the binaries from this directory (implies nothing about building)
#   FRONT_DOOR_PORT=8000  the base URL's port
#   PORT_BASE=8080    services on PORT_BASE .. PORT_BASE+6 (ingress, profiles, accounts,
#                     automations, forwarder, delivery, console)
#   NATS_PORT=4222 REDIS_PORT=6379  the single-node servers' ports
#   DATA_DIR=.data    stores, logs, the dev key and the secrets key
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${DATA_DIR:-$ROOT/.data}
mkdir -p "$DATA/nats" "$DATA/redis" "$DATA/logs"
PROFILE=${PROFILE:-release}
if [ -n "${BIN_DIR:-}" ]; then
  BIN=$BIN_DIR
else
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
  BIN=$TARGET_DIR/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "==> building ($PROFILE)"
  cargo build --profile "$PROFILE" --bins
fi

# The front door, NATS and Redis run in sessions of their own (setsid), so a terminal's Ctrl-C
# reaches only this script and the services, and cleanup stops them in order.
pids=()      # nats-server, redis-server, in stop order
svc_pids=()  # the services
proxy_pid=""
cleanup() {
  echo
  echo "==> stopping"
  # Services first, all at once (each drains within its bound), then the front door, NATS
  # and Redis.
  for p in "${svc_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${svc_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in $proxy_pid "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
# Ctrl-C / SIGTERM end the script; the EXIT trap then stops the stack once, in order.
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${CLUSTER:-0}" = 1 ]; then
  # Three nats-servers joined by routes; streams are created with three replicas.
  routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
  urls=()
  for i in 0 1 2; do
    port=$((4222 + i)); dir=$DATA/nats-cluster/n$i
    mkdir -p "$dir"
    cat > "$dir/nats.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$port
jetstream {
  store_dir: "$dir/store"
$( [ "${DURABLE:-0}" = 1 ] && echo '  sync_interval: always' )
}
cluster {
  name: rc
  listen: 127.0.0.1:$((6222 + i))
  routes: [$routes]
}
CONF
    setsid nats-server -c "$dir/nats.conf" >"$DATA/logs/nats-n$i.log" 2>&1 &
    pids+=($!)
    urls+=("nats://127.0.0.1:$port")
  done
  NATS_URL=$(IFS=,; echo "${urls[*]}")
  export RC_NATS__STREAM_REPLICAS=3
  echo "==> JetStream cluster on :4222-4224 (routes :6222-6224, stores under $DATA/nats-cluster)"
  # Six redis-servers; the first start joins them (3 primaries, a replica each); later starts
  # reuse their nodes.conf.
  seeds=()
  for port in 7000 7001 7002 7003 7004 7005; do
    dir=$DATA/redis-cluster/$port
    mkdir -p "$dir"
    setsid redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --repl-diskless-sync-delay 0 >"$DATA/logs/redis-$port.log" 2>&1 &
    pids+=($!)
    seeds+=("127.0.0.1:$port")
  done
  for _ in $(seq 1 100); do redis-cli -p 7005 ping >/dev/null 2>&1 && break; sleep 0.1; done
  if ! redis-cli -p 7000 cluster info | grep -q '^cluster_known_nodes:6'; then
    redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$DATA/logs/redis-cluster-create.log"
  fi
  for _ in $(seq 1 100); do redis-cli -p 7000 cluster info | grep -q '^cluster_state:ok' && break; sleep 0.2; done
  REDIS_URL=redis://127.0.0.1:7000
  export RC_REDIS__CLUSTER_URLS=$(printf 'redis://%s,' "${seeds[@]}" | sed 's/,$//')
  # Writes reach a replica before a consumer acks (README "Durability").
  export RC_REDIS__WAIT_REPLICAS=${RC_REDIS__WAIT_REPLICAS:-1}
  echo "==> Redis Cluster on :7000-7005 (3 primaries + 3 replicas, data under $DATA/redis-cluster)"
fi
if [ -z "${NATS_URL:-}" ]; then
  NATS_PORT=${NATS_PORT:-4222}
  cat > "$DATA/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
jetstream {
  store_dir: "$DATA/nats"
$( [ "${DURABLE:-0}" = 1 ] && echo '  sync_interval: always' )
}
CONF
  echo "==> nats-server on :$NATS_PORT (store $DATA/nats$( [ "${DURABLE:-0}" = 1 ] && echo ', fsync before ack'))"
  setsid nats-server -c "$DATA/nats.conf" >"$DATA/logs/nats.log" 2>&1 &
  pids+=($!)
  NATS_URL=nats://127.0.0.1:$NATS_PORT
fi
if [ -z "${REDIS_URL:-}" ]; then
  REDIS_PORT=${REDIS_PORT:-6379}
  echo "==> redis-server on :$REDIS_PORT (AOF in $DATA/redis)"
  setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --dir "$DATA/redis" >"$DATA/logs/redis.log" 2>&1 &
  pids+=($!)
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
fi
# Seals stored credentials (RudderStack write keys, provider keys): generated once, kept.
SECRETS_FILE=$DATA/secrets_key
if [ -z "${RC_SECRETS__ENCRYPTION_KEY:-}" ]; then
  [ -s "$SECRETS_FILE" ] || { (umask 077; python3 -c 'import base64,os;print(base64.b64encode(os.urandom(32)).decode())' > "$SECRETS_FILE"); }
  RC_SECRETS__ENCRYPTION_KEY=$(cat "$SECRETS_FILE")
fi
export RC_SECRETS__ENCRYPTION_KEY
export RC_NATS__URL=$NATS_URL RC_REDIS__URL=$REDIS_URL RC_LOG__FORMAT=${RC_LOG__FORMAT:-pretty}
# Local webhooks, data planes and fetch-data endpoints usually live on localhost: let outbound
# calls reach private addresses here (the SSRF guard stays on by default everywhere else).
export RC_OUTBOUND__ALLOW_PRIVATE_NETWORKS=${RC_OUTBOUND__ALLOW_PRIVATE_NETWORKS:-true}
# ...and a local data plane usually speaks plain http (the forwarder requires https by default).
export RC_FORWARDER__ALLOW_HTTP=${RC_FORWARDER__ALLOW_HTTP:-true}


for _ in $(seq 1 100); do
  "$BIN/rc-admin" --redis-url "$REDIS_URL" list-workspaces >/dev/null 2>&1 && break
  sleep 0.1
done

# service binary → port; services that are not built yet are skipped.
PORT_BASE=${PORT_BASE:-8080}
INGRESS_PORT=$PORT_BASE PROFILES_PORT=$((PORT_BASE + 1)) ACCOUNTS_PORT=$((PORT_BASE + 2))
AUTOMATIONS_PORT=$((PORT_BASE + 3)) FORWARDER_PORT=$((PORT_BASE + 4)) DELIVERY_PORT=$((PORT_BASE + 5))
CONSOLE_PORT=$((PORT_BASE + 6))
SERVICES="rc-ingress:$INGRESS_PORT rc-profiles:$PROFILES_PORT rc-accounts:$ACCOUNTS_PORT rc-automations:$AUTOMATIONS_PORT rc-forwarder:$FORWARDER_PORT rc-delivery:$DELIVERY_PORT rc-console:$CONSOLE_PORT"
FRONT_DOOR_PORT=${FRONT_DOOR_PORT:-8000}
BASE=http://127.0.0.1:$FRONT_DOOR_PORT
# The console calls the public API through the front door.
export RC_CONSOLE__API_URL=${RC_CONSOLE__API_URL:-$BASE}
started=()
for entry in $SERVICES; do
  name=${entry%%:*}; port=${entry##*:}
  [ -x "$BIN/$name" ] || continue
  RC_HTTP__LISTEN=127.0.0.1:$port "$BIN/$name" >"$DATA/logs/$name.log" 2>&1 &
  svc_pids+=($!)
  started+=("$name:$port")
done

# The front door: nginx on scripts/front-door.conf.in (routes checked against deploy/ by
# tests/tests/deploy_parity.rs), in front of the services' own ports.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
mkdir -p "$DATA/nginx"
sed -e "s#@RUN_DIR@#$DATA/nginx#g" -e "s#@LISTEN@#127.0.0.1:$FRONT_DOOR_PORT#" \
    -e "s#@INGRESS@#127.0.0.1:$INGRESS_PORT#" -e "s#@PROFILES@#127.0.0.1:$PROFILES_PORT#" \
    -e "s#@ACCOUNTS@#127.0.0.1:$ACCOUNTS_PORT#" -e "s#@AUTOMATIONS@#127.0.0.1:$AUTOMATIONS_PORT#" \
    -e "s#@FORWARDER@#127.0.0.1:$FORWARDER_PORT#" -e "s#@DELIVERY@#127.0.0.1:$DELIVERY_PORT#" \
    -e "s#@CONSOLE@#127.0.0.1:$CONSOLE_PORT#" \
    scripts/front-door.conf.in > "$DATA/nginx/nginx.conf"
setsid "$NGINX" -p "$DATA/nginx" -c "$DATA/nginx/nginx.conf" -e "$DATA/logs/nginx.log" >>"$DATA/logs/nginx.log" 2>&1 &
proxy_pid=$!
echo "==> front door (nginx) on $BASE (log: $DATA/logs/nginx.log)"

KEY_FILE=$DATA/dev_api_key
if [ -n "${DEV_API_KEY:-}" ]; then
  key=$DEV_API_KEY
elif [ -s "$KEY_FILE" ]; then
  key=$(cat "$KEY_FILE")
else
  key=""
fi
out=$("$BIN/rc-admin" --redis-url "$REDIS_URL" --json ensure-workspace dev --name Dev ${key:+--key "$key"})
key=$(python3 -c 'import json,sys;print(json.loads(sys.stdin.read())["api_key"])' <<<"$out")
[ -n "${DEV_API_KEY:-}" ] || { (umask 077; printf '%s' "$key" > "$KEY_FILE"); }

for entry in "${started[@]}"; do
  name=${entry%%:*}; port=${entry##*:}
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    echo "==> $name ready on http://127.0.0.1:$port (log: $DATA/logs/$name.log)"
  else
    echo "!!  $name is not ready on :$port; see $DATA/logs/$name.log"
  fi
done

# The dev workspace gets the built-in inbox as its provider for every channel, so sends land
# somewhere readable (GET /inbox/<user id>). An existing "inbox" provider is left as it is.
for entry in "${started[@]}"; do
  [ "${entry%%:*}" = rc-delivery ] || continue
  url=http://127.0.0.1:${entry##*:}/providers/inbox
  if ! curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$url" 2>/dev/null; then
    if curl -fsS -o /dev/null -X PUT "$url" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"type":"inbox","channels":["inbox","email","sms","push","chat"]}'; then
      echo "==> dev workspace: inbox provider configured on rc-delivery"
    else
      echo "!!  could not configure the dev inbox provider on rc-delivery"
    fi
  fi
done

# And a first automation: a "Signed Up" track event sends a welcome message (to the inbox), so
# the first event shows the whole path. Existing templates are left as they are.
for entry in "${started[@]}"; do
  [ "${entry%%:*}" = rc-automations ] || continue
  base=http://127.0.0.1:${entry##*:}
  auth=(-H "Authorization: Bearer $key" -H 'Content-Type: application/json')
  if ! curl -fsS -o /dev/null "${auth[@]}" "$base/notifications/templates/WELCOME" 2>/dev/null; then
    curl -fsS -o /dev/null -X POST "${auth[@]}" "$base/notifications/templates" \
      -d '{"id":"WELCOME","name":"Welcome","published":true,"channels":{"inbox":{"title":"Welcome, {{profile.name}}","body":"Thanks for signing up with {{plan}}."},"email":{"title":"Welcome, {{profile.name}}","body":"Thanks for signing up with {{plan}}."}}}' \
      || echo "!!  could not create the WELCOME notification template"
  fi
  if ! curl -fsS -o /dev/null "${auth[@]}" "$base/automations/templates/welcome" 2>/dev/null; then
    if curl -fsS -o /dev/null -X POST "${auth[@]}" "$base/automations/mappings" \
        -d '{"event":"Signed Up","template":{"id":"welcome","name":"Welcome","steps":[{"action":"send","recipient":"refs.data.userId","template":"WELCOME"}]}}'; then
      echo "==> dev workspace: \"Signed Up\" mapped to the welcome automation"
    else
      echo "!!  could not map \"Signed Up\" to the welcome automation"
    fi
  fi
done

cat <<MSG

rudder-courier is running. Base URL (every public path; per-service ports $INGRESS_PORT-$DELIVERY_PORT stay for
debugging):

  $BASE

Console (sign in with the key below; it calls the API through the base URL):

  $BASE/console/   (or its own port: http://127.0.0.1:$CONSOLE_PORT/console/)

Workspace "dev", API key:

  $key

RudderStack's Webhook destination: URL $BASE/inbound/rudderstack, method POST, header
Authorization: Bearer $key. The same request by hand:

  curl -sS -X POST $BASE/inbound/rudderstack \\
    -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' \\
    -d '{"type":"identify","userId":"u_1","traits":{"email":"ada@example.org","name":"Ada"},"messageId":"m-1"}'

then a track event: "Signed Up" is mapped to a welcome automation that sends to the inbox:

  curl -sS -X POST $BASE/inbound/rudderstack \\
    -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' \\
    -d '{"type":"track","event":"Signed Up","userId":"u_1","properties":{"plan":"Pro"},"messageId":"m-2"}'

Messages sent to the dev workspace land in the built-in inbox:

  curl -sS $BASE/inbox/u_1 -H 'Authorization: Bearer $key'
  curl -sS '$BASE/messages?recipient=u_1' -H 'Authorization: Bearer $key'

The Courier Node SDK: new Courier({ baseURL: '$BASE', apiKey: '$key' })

Press Ctrl-C to stop everything.
MSG
wait -n $proxy_pid "${pids[@]}" "${svc_pids[@]}" || true
echo "a process exited; stopping the stack"
