#!/usr/bin/env bash
# What the test suite needs beyond the Python packages: Debian's Chromium for the browser tests.
# Playwright's own browser download cannot work offline, so the tests drive the system Chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "note: chromium is not installed; the browser tests (tests/e2e) will be skipped." >&2
  echo "      install it with: sudo apt-get install -y chromium" >&2
fi
