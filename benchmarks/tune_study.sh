#!/usr/bin/env bash
# Every few-step family of the table tuned with the same budget on the validation split:
#   [JOBS=2] benchmarks/tune_study.sh DATASET BUDGET_GFWD TRIALS [TEACHER_RUN]
# one `zoo tune` study per row family (CD and CT, sCT and sCD apart), each stopping at BUDGET_GFWD
# billion forward-equivalent passes or TRIALS trials, in tune/DATASET/FAMILY/. Distilled families
# and those starting from a teacher's weights use TEACHER_RUN, an edm run on the trials' data
# (toy: the bench's runs/toy/edm; digits: an edm run on split "fit", docs/tuning.md). Stopped at
# any point, the same command continues every study where it was. Each study retrains its best
# $CONFIRM (default 2) trials at full length and names the best of those. $JOBS studies run at
# once (default 1; one process per study: a study in use is refused, and the others go on).
set -uo pipefail
dataset=${1:?dataset}; budget=${2:?budget in G forward-equivalent passes}; trials=${3:?trials}
teacher=${4:-runs/$dataset/edm}
zoo=${ZOO:-zoo}
jobs_max=${JOBS:-1}
failed=0
study() {  # FAMILY METHOD [--set ...]
  local family=$1 method=$2; shift 2
  $zoo tune "$method" --dataset "$dataset" --trials "$trials" --budget-gfwd "$budget" \
    --confirm "${CONFIRM:-2}" --out "tune/$dataset/$family" --no-progress "$@" \
    || { echo "study $family failed (exit $?)" >&2; return 1; }
}
run() {  # a study, in the background while fewer than $jobs_max run
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || failed=1; done
  study "$@" &
}
run edm edm
run cm-cd cm --set mode=cd --set "teacher=$teacher"
run cm-ct cm --set mode=ct
run pd pd --set "teacher=$teacher"
run rf rf
run meanflow meanflow
run ect ect --set "teacher=$teacher"
run scm-sct scm --set mode=sct --set "teacher=$teacher"
run scm-scd scm --set mode=scd --set "teacher=$teacher"
while [ -n "$(jobs -rp)" ]; do wait -n || failed=1; done
exit $failed
