#!/bin/sh
# Starts jupyter_server for labdock. The hub sets:
#   LABDOCK_SERVER_SECRET  required; the token every request must carry (the hub's proxy adds it)
#   LABDOCK_PREFIX         the URL prefix the app serves under, e.g. /user/alice/lab/ (default /)
#   LABDOCK_PORT           the port to listen on (default 8888)
set -eu

if [ -z "${LABDOCK_SERVER_SECRET:-}" ]; then
    echo "labdock: LABDOCK_SERVER_SECRET is empty; refusing to start a server without a token" >&2
    exit 1
fi

# jupyter_server reads its token from JUPYTER_TOKEN: unlike --IdentityProvider.token,
# it then stays out of the process list that any terminal in the server can read.
JUPYTER_TOKEN="$LABDOCK_SERVER_SECRET"
export JUPYTER_TOKEN

# jupyter-server rather than `jupyter server`: the `jupyter` launcher would start a second
# Python process only to exec this one.
exec jupyter-server \
    --ip=0.0.0.0 \
    --port="${LABDOCK_PORT:-8888}" \
    --ServerApp.port_retries=0 \
    --ServerApp.base_url="${LABDOCK_PREFIX:-/}" \
    --ServerApp.allow_remote_access=True \
    --ServerApp.trust_xheaders=True \
    --ServerApp.open_browser=False \
    --ServerApp.terminals_enabled=True \
    --ServerApp.root_dir="${HOME:-/home/analyst}"
