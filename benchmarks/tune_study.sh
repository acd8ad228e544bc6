#!/usr/bin/env bash
# Every few-step family of the table tuned with the same budget on the validation split:
#   [JOBS=2] benchmarks/tune_study.sh DATASET BUDGET_GFWD TRIALS [TEACHER_RUN]
# one `zoo tune` study per row family (CD and CT, sCT and sCD apart), each stopping at BUDGET_GFWD
# billion forward-equivalent passes or TRIALS trials, in tune/DATASET/FAMILY/; the families trained
# from nothing (CT, MeanFlow) get twice the budget, as they get the teacher's and a student's
# training budgets: a few-step row's tuning, its teacher's study included, costs the same for
# every family (docs/tuning.md). Distilled families
# and those starting from a teacher's weights use TEACHER_RUN, an edm run on the trials' data
# (toy: the bench's runs/toy/edm; digits: an edm run on split "fit", docs/tuning.md). Stopped at
# any point, the same command continues every study where it was. Each study retrains its best
# $CONFIRM (default 2) trials at full length and names the best of those. $JOBS studies run at
# once (default 1; one process per study: a study in use is refused, and the others go on).
# $FAMILIES (comma-separated, e.g. meanflow,scm-sct) runs those studies only (default: all).
set -uo pipefail
dataset=${1:?dataset}; budget=${2:?budget in G forward-equivalent passes}; trials=${3:?trials}
teacher=${4:-runs/$dataset/edm}
zoo=${ZOO:-zoo}
jobs_max=${JOBS:-1}
failed=0
known=",$(sed -n 's/^run \([a-z-]*\) .*/\1/p' "$0" | paste -sd,),"  # the studies run below
families=${FAMILIES:-}
for family in ${families//,/ }; do
  case "$known" in *",$family,"*) ;; *) echo "FAMILIES: no study $family; the studies: ${known:1:-1}" >&2; exit 2 ;; esac
done
study() {  # FAMILY BUDGETS METHOD [--set ...]: BUDGETS = how many times BUDGET_GFWD
  local family=$1 times=$2 method=$3; shift 3
  $zoo tune "$method" --dataset "$dataset" --trials "$trials" \
    --budget-gfwd "$(awk -v b="$budget" -v k="$times" 'BEGIN { print b * k }')" \
    --confirm "${CONFIRM:-2}" --out "tune/$dataset/$family" --no-progress "$@" \
    || { echo "study $family failed (exit $?)" >&2; return 1; }
}
run() {  # a study, in the background while fewer than $jobs_max run
  case ",${FAMILIES:-$1}," in *",$1,"*) ;; *) return 0 ;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || failed=1; done
  study "$@" &
}
run edm 1 edm
run cm-cd 1 cm --set mode=cd --set "teacher=$teacher"
run cm-ct 2 cm --set mode=ct
run pd 1 pd --set "teacher=$teacher"
run rf 1 rf
run meanflow 2 meanflow
run ect 1 ect --set "teacher=$teacher"
run scm-sct 1 scm --set mode=sct --set "teacher=$teacher"
run scm-scd 1 scm --set mode=scd --set "teacher=$teacher"
while [ -n "$(jobs -rp)" ]; do wait -n || failed=1; done
exit $failed
