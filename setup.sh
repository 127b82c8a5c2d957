#!/usr/bin/env bash
# Set up lalm in ./.venv on a fresh machine: `bash setup.sh` (runtime + what `lalm demo` needs)
# or `bash setup.sh --test`
# (runtime + test and reference dependencies). Re-running is cheap: nothing is reinstalled
# unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
extras="[demo]"  # what `lalm demo` needs beyond the runtime (lalm-synth's speech engines)
[ "${1:-}" = "--test" ] && extras="[test]"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".setup-stamp"
if [ "$extras" = "[test]" ]; then stamp=".setup-stamp-test"; fi
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU build of torch 2.13.0 lies on this machine's disk; a bare `torch` pulls CUDA (GBs).
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".$extras"
  echo "$want" > "$stamp"
fi
# The web page's browser test drives a real headless Chromium (Debian's package).
if [ "$extras" = "[test]" ] && ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "setup: could not install chromium; the browser test will skip"
fi
