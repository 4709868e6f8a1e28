#!/usr/bin/env bash
# Regenerate requirements.txt, the lock file the Dockerfile and App Engine install: every
# runtime dependency of pyproject.toml (with the otel, psycopg, gevent and pubsub extras), each pinned to one
# version with the hashes of its files on PyPI, for every Python the project supports
# (--universal; markers where a dependency differs). The project's own packages (cloudjobs,
# cloudjobs-client) are left out: pip cannot hash a folder, so they are installed with
# --no-deps after the lock. Needs uv (`pip install uv`) and the package index. docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# uv's default index (PyPI) only, and no uv.toml: the lock is the same wherever it is made.
export UV_NO_CONFIG=1
uv pip compile --universal --python-version 3.11 --generate-hashes \
  --no-emit-package cloudjobs --no-emit-package cloudjobs-client \
  --custom-compile-command "deploy/lock.sh" \
  --output-file requirements.txt "$@" - <<'IN'
./clients/python
.[otel,psycopg,gevent,pubsub]
IN
