#!/usr/bin/env bash
# mlyard's model server in the same run as the peers users would pick instead (../shared/peer-bench):
# wrk, 16 connections, each server pinned to one core with one worker, the same iris LR and
# breast-cancer RF(100) models and bodies. Prints the summary table (req/s, p50/p99, CPU per request,
# cold start, RSS). Usage: bench/serving_peers.sh [extra run_all.py flags, e.g. --reps 1 --duration 3]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PEER_BENCH="${PEER_BENCH:-$ROOT/../shared/peer-bench}"
[[ -d "$PEER_BENCH" ]] || { echo "peer-bench not found at $PEER_BENCH (set PEER_BENCH)" >&2; exit 2; }
bash "$PEER_BENCH/setup.sh" >/dev/null
export CANDIDATE_NAME=mlyard
export CANDIDATE_START="$ROOT/.venv/bin/mlyard serve {mlflow_model} --port {port} --name {model}"
export CANDIDATE_LIVE=/v2/health/live
export CANDIDATE_V1='/v1/models/{model}:predict'
export CANDIDATE_V2='/v2/models/{model}/infer'
exec python3 "$PEER_BENCH/run_all.py" --peers mlyard,kserve,mlserver-pw0,azml "$@"
