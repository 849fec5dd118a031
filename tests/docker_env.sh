#!/usr/bin/env bash
# Install and start what the Docker tests need: Debian's dockerd + BuildKit-capable CLI,
# an htpasswd-protected docker-registry on loopback, and a static busybox for FROM-scratch
# test images. Idempotent: installs only what is missing, starts only what does not answer.
# Writes /tmp/quicflow-registry.json (address, username, password, docker CLI) for the
# tests; exports nothing. Exits 0 even when Docker cannot be started, so the suite still
# runs: the Docker tests then skip with the reason written to that file.
set -uo pipefail

STATE=/tmp/quicflow-registry.json
DIR=/tmp/quicflow-registry
LOG=/tmp/quicflow-docker-env.log
USER_NAME=quicflow-test
PASS_FILE="$DIR/password"
mkdir -p "$DIR"
: >"$LOG"

fail() {
  printf '{"available": false, "reason": "%s"}\n' "$1" >"$STATE"
  echo "docker_env: $1 (see $LOG)" >&2
  exit 0
}

need=()
[ -x /usr/bin/docker ] && command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v htpasswd >/dev/null || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >>"$LOG" 2>&1 \
    || fail "apt-get install ${need[*]} failed"
fi

# Debian's client has BuildKit built in; the one first on PATH may lack buildx.
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
  mkdir -p /var/lib/docker
  nohup dockerd --data-root /var/lib/docker >>/tmp/quicflow-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not answer within 30s (see /tmp/quicflow-dockerd.log)"
fi

# One password per machine, kept across calls so a running registry stays usable.
[ -s "$PASS_FILE" ] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASS_FILE"; chmod 600 "$PASS_FILE"; }
PASSWORD=$(cat "$PASS_FILE")
htpasswd -Bbc "$DIR/htpasswd" "$USER_NAME" "$PASSWORD" >>"$LOG" 2>&1 || fail "htpasswd failed"

ADDRESS=""
if [ -s "$DIR/address" ]; then
  ADDRESS=$(cat "$DIR/address")
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDRESS/v2/" || true)
  [ "$code" = 401 ] || ADDRESS=""
fi
if [ -z "$ADDRESS" ]; then
  PORT=5000
  if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  ADDRESS="127.0.0.1:$PORT"
  cat >"$DIR/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/data}
  delete: {enabled: true}
http:
  addr: $ADDRESS
auth:
  htpasswd: {realm: quicflow-test, path: $DIR/htpasswd}
YAML
  nohup docker-registry serve "$DIR/config.yml" >>/tmp/quicflow-registry.log 2>&1 </dev/null &
  ok=""
  for _ in $(seq 1 40); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDRESS/v2/" || true)
    [ "$code" = 401 ] && { ok=1; break; }
    sleep 0.25
  done
  [ -n "$ok" ] || fail "docker-registry did not answer on $ADDRESS (see /tmp/quicflow-registry.log)"
  echo "$ADDRESS" >"$DIR/address"
fi

cat >"$STATE" <<JSON
{"available": true, "address": "$ADDRESS", "username": "$USER_NAME", "password": "$PASSWORD",
 "docker": "$DOCKER", "busybox": "/bin/busybox"}
JSON
chmod 600 "$STATE"
echo "docker_env: dockerd up, registry on $ADDRESS (details in $STATE)"
