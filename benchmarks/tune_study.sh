#!/usr/bin/env bash
# Every few-step family of the table tuned with the same budget on the validation split:
#   benchmarks/tune_study.sh DATASET BUDGET_GFWD TRIALS [TEACHER_RUN]
# one `zoo tune` study per row family (CD and CT, sCT and sCD apart), each stopping at BUDGET_GFWD
# billion forward-equivalent passes or TRIALS trials, in tune/DATASET/FAMILY/. Distilled families
# and those starting from a teacher's weights use TEACHER_RUN, an edm run on the trials' data
# (toy: the bench's runs/toy/edm; digits: an edm run on split "fit", docs/tuning.md). Stopped at
# any point, the same command continues every study where it was. Each study retrains its best
# $CONFIRM (default 2) trials at full length and names the best of those.
set -euo pipefail
dataset=${1:?dataset}; budget=${2:?budget in G forward-equivalent passes}; trials=${3:?trials}
teacher=${4:-runs/$dataset/edm}
zoo=${ZOO:-zoo}
study() {  # FAMILY METHOD [--set ...]
  local family=$1 method=$2; shift 2
  $zoo tune "$method" --dataset "$dataset" --trials "$trials" --budget-gfwd "$budget" \
    --confirm "${CONFIRM:-2}" --out "tune/$dataset/$family" --no-progress "$@"
}
study edm edm
study cm-cd cm --set mode=cd --set "teacher=$teacher"
study cm-ct cm --set mode=ct
study pd pd --set "teacher=$teacher"
study rf rf
study meanflow meanflow
study ect ect --set "teacher=$teacher"
study scm-sct scm --set mode=sct --set "teacher=$teacher"
study scm-scd scm --set mode=scd --set "teacher=$teacher"
