#!/bin/sh
# Starts Apache Airflow for labdock, behind the secret gate (labdock_airflow.py). The hub sets:
#   LABDOCK_SERVER_SECRET  required; the token every request must carry (the hub's proxy adds it)
#   LABDOCK_PREFIX         the URL prefix the app serves under, e.g. /user/alice/flows/ (default /)
#   LABDOCK_PORT           the gate's port (default 8080); Airflow itself listens on 127.0.0.1 only
# The metadata DB (SQLite), airflow.cfg, logs and DAGs live in $HOME/airflow, the home volume.
set -eu

if [ -z "${LABDOCK_SERVER_SECRET:-}" ]; then
    echo "labdock: LABDOCK_SERVER_SECRET is empty; refusing to start a server without a token" >&2
    exit 1
fi

prefix="${LABDOCK_PREFIX:-/}"
case "$prefix" in */) ;; *) prefix="$prefix/" ;; esac
AIRFLOW_INTERNAL_PORT="${AIRFLOW_INTERNAL_PORT:-18080}"
AIRFLOW_HOME="${HOME:-/home/analyst}/airflow"
mkdir -p "$AIRFLOW_HOME/dags"

# Airflow 3 takes a relative base URL: the API and UI are served under its path, and
# the UI's <base href> follows it. The hub has already signed the person in, so
# Airflow's login is off (all admins); the gate in front requires the server's secret.
# Tasks talk to the execution API on the internal port, with their own tokens.
export AIRFLOW_HOME AIRFLOW_INTERNAL_PORT \
    AIRFLOW__API__BASE_URL="$prefix" \
    AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:${AIRFLOW_INTERNAL_PORT}${prefix}execution/" \
    AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager \
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True \
    AIRFLOW__CORE__EXECUTOR=LocalExecutor \
    AIRFLOW__CORE__DAGS_FOLDER="$AIRFLOW_HOME/dags" \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__PARALLELISM=4 \
    AIRFLOW__API__WORKERS=1 \
    AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30 \
    AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=30 \
    AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False \
    AIRFLOW__LOGGING__COLORED_CONSOLE_LOG=False \
    NO_COLOR=1

exec python3 -m labdock_airflow
