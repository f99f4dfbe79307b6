#!/usr/bin/env bash
# CI check of the submitit_slurm launcher against a real (single-node, localhost) Slurm.
#
#   bash scripts/ci_slurm.sh            # python: $MTLBENCH_PYTHON, else $VENV/bin/python, else .venv
#
# Installs slurm-wlm, slurmdbd, munge and mariadb-server with apt-get if missing (needs root), starts
# them with scripts/slurm_local.sh, runs a 4-job sweep (2 strategies x 2 seeds, a few steps each)
# with hydra/launcher=slurm, checks every job's metrics.json and `mtlbench report`, and stops every
# daemon it started, whatever happens. The sweep is guarded by a timeout ($CI_SLURM_TIMEOUT_S).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${MTLBENCH_PYTHON:-${VENV:+$VENV/bin/python}}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
TIMEOUT_S=${CI_SLURM_TIMEOUT_S:-300}
WORK=$(mktemp -d /tmp/mtlbench-ci-slurm.XXXXXX)
export SLURM_LOCAL_DIR=$WORK/slurm
export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf

log() { echo "[ci_slurm] $*"; }
fail() { log "FAIL: $*"; exit 1; }

[[ -x $PYTHON ]] || fail "no python at $PYTHON (set MTLBENCH_PYTHON or VENV)"
[[ $(id -u) == 0 ]] || fail "needs root (apt-get, daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v mariadbd >/dev/null; then
  log "installing slurm-wlm slurmdbd munge mariadb-server"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log"; fail "apt-get install failed"; }
fi

cleanup() {
  local rc=$?
  bash "$REPO/scripts/slurm_local.sh" stop || true
  if ((rc != 0)); then
    for f in "$SLURM_LOCAL_DIR"/*.log; do [[ -f $f ]] && { echo "--- $f"; tail -15 "$f"; }; done
    find "$WORK/sweep/.submitit" -name '*.err' -exec sh -c 'echo "--- $1"; tail -15 "$1"' _ {} \; \
      2>/dev/null || true
  fi
  if ((rc != 0)); then log "work dir kept for inspection: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

bash "$REPO/scripts/slurm_local.sh" start
sinfo

log "sweep: 2 strategies x 2 seeds on Slurm (timeout ${TIMEOUT_S}s)"
cd "$WORK"
timeout --kill-after=10 "$TIMEOUT_S" "$PYTHON" -m mtlbench.cli train -m hydra/launcher=slurm \
  strategy=equal,realtime seed=0,1 \
  trainer.max_steps=6 trainer.eval_every=3 trainer.batch_size=32 trainer.device=cpu \
  data.n_train=256 data.n_val=64 data.n_test=64 \
  hydra.sweep.dir="$WORK/sweep" hydra.launcher.timeout_min=5 hydra.launcher.mem_gb=null \
  hydra.launcher.cpus_per_task=1 \
  || fail "the sweep failed or timed out"

jobs=0
for dir in "$WORK"/sweep/*; do
  [[ -d $dir/.hydra ]] || continue
  jobs=$((jobs + 1))
  "$PYTHON" - "$dir/metrics.json" <<'PY' || fail "bad or missing metrics.json in $dir"
import json, math, sys
m = json.load(open(sys.argv[1]))
assert m["steps"] == 6 and len(m["tasks"]) == 4, m
assert all(math.isfinite(v) for t in m["tasks"].values() for k, v in t.items() if k != "kind"), m
print(f"ok  {m['strategy']:<9} seed={m['seed']}  {sys.argv[1]}")
PY
done
((jobs == 4)) || fail "expected 4 job dirs, found $jobs"
[[ -d $WORK/sweep/.submitit ]] || fail "submitit's folder is not inside the sweep dir"
[[ ! -e $WORK/.submitit && ! -e $REPO/.submitit ]] || fail "submitit left a folder outside the sweep"
# job-end records reach slurmdbd asynchronously: poll sacct for a while
for _ in $(seq 60); do
  sacct -X -n -o JobID,State >"$WORK/sacct.txt"
  (( $(grep -c COMPLETED "$WORK/sacct.txt") == 4 )) && break
  sleep 0.5
done
cat "$WORK/sacct.txt"
(( $(grep -c COMPLETED "$WORK/sacct.txt") == 4 )) || fail "sacct does not list 4 COMPLETED jobs"
"$PYTHON" -m mtlbench.cli report "$WORK/sweep" --no-files | grep -E "^\| (equal|realtime) " \
  || fail "mtlbench report did not list both strategies"
log "PASS: 4 Slurm jobs finished with metrics.json"
