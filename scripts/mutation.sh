#!/usr/bin/env bash
# Mutation testing with cosmic-ray (not in CI: slow). See docs/testing.md.
#
#   scripts/mutation.sh                      every module in the table below, each with its tests
#   scripts/mutation.sh MODULE [TEST ...]    one module (a path), with the given test files/ids
#
# The tree is copied to a temporary folder and mutated there (never the working tree, which
# other processes may be using); PYTHONPATH points the tests at the copy (the plugins are
# imported from plugins/ there too). Results: $MUTATION_OUT (default /tmp/zoo-mutation-results)/<module>.txt and .sqlite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${MUTATION_OUT:-${TMPDIR:-/tmp}/zoo-mutation-results}
mkdir -p "$OUT"

# module -> the tests that are meant to catch its bugs (kept to seconds per mutant)
declare -A TESTS=(
  [zoo/training/ema.py]="tests/test_reliability.py::test_the_ema_follows_edms_ramp_up_formula tests/test_reliability.py::test_the_trainers_ema_is_the_hand_folded_average tests/test_mutants.py"
  [zoo/diffusion/precond.py]="tests/test_diffusion.py tests/test_editing.py"
  [zoo/diffusion/schedules.py]="tests/test_diffusion.py tests/test_mutants.py"
  [zoo/diffusion/samplers.py]="tests/test_diffusion.py tests/test_mutants.py"
  [zoo/diffusion/random.py]="tests/test_diffusion.py tests/test_editing.py"
  [plugins/zoo_cm/loss.py]="tests/test_cm.py tests/test_mutants.py"
  [plugins/zoo_edm/method.py]="tests/test_edm.py"
  [plugins/zoo_pd/method.py]="tests/test_pd.py"
  [zoo/training/trainer.py]="tests/test_training.py tests/test_mutants.py"
  [zoo/training/checkpoint.py]="tests/test_training.py"
  [zoo/metrics/w2.py]="tests/test_metrics.py"
  [zoo/editing.py]="tests/test_editing.py tests/test_mutants.py"
  [zoo/data/loader.py]="tests/test_data.py tests/test_mutants.py"
)

run_one() {
  local module=$1; shift
  local tests="$*"
  local name=${module//\//_}
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/zoo-mutation.XXXXXX")
  trap 'rm -rf "$work"' EXIT  # also when the baseline fails (the tests fail unmutated)
  # tracked and untracked-but-not-ignored files: what the tests see in the working tree
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work" 2>/dev/null || true
  cat > "$work/cosmic-ray.toml" <<TOML
[cosmic-ray]
module-path = "$module"
timeout = 120.0
excluded-modules = []
test-command = "env OMP_NUM_THREADS=1 PYTHONPATH=$work:$work/plugins $PY -m pytest -x -q -p no:cacheprovider $tests"

[cosmic-ray.distributor]
name = "local"
TOML
  (
    cd "$work"
    "$PY" -m cosmic_ray.cli init cosmic-ray.toml session.sqlite
    "$PY" -m cosmic_ray.cli baseline cosmic-ray.toml
    "$PY" -m cosmic_ray.cli exec cosmic-ray.toml session.sqlite
    "$ROOT/.venv/bin/cr-report" session.sqlite --show-pending > "$OUT/$name.txt" || true
    cp session.sqlite "$OUT/$name.sqlite"
  )
  tail -n 4 "$OUT/$name.txt"
  rm -rf "$work"
}

if [ $# -ge 1 ]; then
  module=$1; shift
  if [ $# -ge 1 ]; then run_one "$module" "$@"; else run_one "$module" ${TESTS[$module]}; fi
else
  for module in "${!TESTS[@]}"; do run_one "$module" ${TESTS[$module]}; done
fi
