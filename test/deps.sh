#!/usr/bin/env bash
# Installs the Debian packages the tests (and the demo) need, when they are missing.
# Where it cannot (not root, no apt-get), it prints the exact command to run and fails.
#
# Every program a test asks for with harness.Require is checked here by its own name, so that
# `make test` under CI=true (where a missing tool fails the test) passes on a fresh machine.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_py() { /usr/bin/python3 -c "import $1" >/dev/null 2>&1; }
# want PACKAGE: add it once.
want() {
  local p
  for p in "${need[@]}"; do [ "$p" = "$1" ] && return 0; done
  need+=("$1")
}

have_cmd redis-server || want redis-server
have_cmd redis-cli || want redis-tools
have_py celery || want python3-celery
have_py django_redis || want python3-django-redis
# The RabbitMQ tests: a real server run as a local process, and Celery's AMQP client.
have_cmd rabbitmq-server || want rabbitmq-server
have_cmd rabbitmqctl || want rabbitmq-server
have_py amqp || want python3-amqp
have_cmd prometheus || want prometheus
have_cmd promtool || want prometheus
have_cmd prometheus-alertmanager || want prometheus-alertmanager
have_cmd amtool || want prometheus-alertmanager
# TestDeploySystemd runs `systemd-analyze verify` on the unit; a container base image has no systemd.
have_cmd systemd-analyze || want systemd

[ ${#need[@]} -eq 0 ] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${need[*]}"
if [ "$(id -u)" -ne 0 ] || ! have_cmd apt-get; then
  echo "test/deps.sh: missing: ${need[*]}" >&2
  echo "test/deps.sh: install them with:  sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "test/deps.sh: installing missing Debian packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages may start their services; the tests start their own instances on other ports.
for svc in redis-server rabbitmq-server prometheus prometheus-alertmanager; do
  (service "$svc" stop >/dev/null 2>&1 || true)
done
echo "test/deps.sh: installed ${need[*]}"
