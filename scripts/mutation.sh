#!/usr/bin/env bash
# Mutation testing with cosmic-ray (not in CI: slow). See docs/testing.md.
#
#   scripts/mutation.sh                        every module in the table below, each with its tests
#   scripts/mutation.sh MODULE [TEST ...]      one module (a path), with its tests from the table or
#                                              the given test files/ids
#   scripts/mutation.sh --survivors MODULE [TEST ...]
#                                              re-run only the last run's survivors of MODULE (after
#                                              adding tests); refused if the module changed since
#   scripts/mutation.sh --summary              one table across the modules run so far
#   MUTATION_SAMPLE=N scripts/mutation.sh ...  run N of the module's mutants, drawn at random
#                                              (seeded by the module's path): an estimate when a
#                                              whole run does not fit the machine
#
# The tree is copied to a temporary folder and mutated there (never the working tree, which
# other processes may be using); PYTHONPATH points the tests at the copy (the plugins are
# imported from plugins/ there too). Results: $MUTATION_OUT (default /tmp/zoo-mutation-results)/
# <module>.txt (cr-report, survivors with their diffs), .sqlite (the session) and .commit (the
# commit the copy was taken from, "+dirty" when the module had uncommitted changes).
# Mutant runs are niced and single-threaded (OMP_NUM_THREADS=1); each stops at the first
# failing test (pytest -x); the timeout is 4x the unmutated run, at least 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${MUTATION_OUT:-${TMPDIR:-/tmp}/zoo-mutation-results}
mkdir -p "$OUT"

# module -> the tests that are meant to catch its bugs (kept to seconds per mutant)
declare -A TESTS=(
  [zoo/training/ema.py]="tests/test_reliability.py::test_the_ema_follows_edms_ramp_up_formula tests/test_reliability.py::test_the_trainers_ema_is_the_hand_folded_average tests/test_mutants.py"
  [zoo/diffusion/precond.py]="tests/test_mutants_diffusion.py tests/test_diffusion.py"
  [zoo/diffusion/schedules.py]="tests/test_mutants_diffusion.py tests/test_diffusion.py"
  [zoo/diffusion/samplers.py]="tests/test_mutants_diffusion.py tests/test_diffusion.py tests/test_mutants.py::test_stochastic_churn_adds_noise_of_variance_sigma_hat_squared_minus_sigma_squared"
  [zoo/diffusion/fast_samplers.py]="tests/test_fast_samplers.py tests/test_mutants_diffusion.py"
  [zoo/diffusion/random.py]="tests/test_mutants_diffusion.py tests/test_diffusion.py"
  [plugins/zoo_cm/loss.py]="tests/test_mutants_cm.py tests/test_mutants.py tests/test_cm.py --deselect tests/test_cm.py::test_distances_of_an_image_with_itself_are_zero --deselect tests/test_cm.py::test_cli_train_cd_ct_and_sample"
  [plugins/zoo_edm/method.py]="tests/test_mutants_edm.py tests/test_edm.py"
  [plugins/zoo_pd/method.py]="tests/test_pd.py"
  [plugins/zoo_rf/flow.py]="tests/test_mutants_flows.py tests/test_rf.py --deselect tests/test_rf.py::test_zoo_bench_trains_1rf_then_its_reflow_and_tables_both"
  [plugins/zoo_meanflow/loss.py]="tests/test_mutants_flows.py tests/test_meanflow.py tests/test_training_cost.py::test_meanflow_counts_its_jvp_as_two_forward_passes"
  [zoo/training/trainer.py]="tests/test_mutants_training.py tests/test_training.py tests/test_mutants.py tests/test_telemetry.py::test_eval_every_writes_finite_metrics_at_its_steps_and_resumes_cleanly tests/test_reliability.py::test_a_signal_checkpoints_the_current_step_and_says_how_to_resume"
  [zoo/training/checkpoint.py]="tests/test_mutants_training.py tests/test_training.py"
  [zoo/metrics/__init__.py]="tests/test_mutants_metrics.py tests/test_metrics.py"
  [zoo/metrics/fidelity.py]="tests/test_fid_protocol.py tests/test_metrics.py tests/test_mutants_metrics.py"
  [zoo/metrics/w2.py]="tests/test_mutants_metrics.py tests/test_metrics.py::test_w2_exact_on_known_cases tests/test_metrics.py::test_w2_through_the_evaluator_has_a_positive_floor tests/test_metrics.py::test_w2_is_the_mean_over_disjoint_sets_each_against_its_own_true_set"
  [zoo/editing.py]="tests/test_mutants_editing.py tests/test_editing.py tests/test_mutants.py::test_edit_files_edits_input_i_with_seed_plus_i"
  [zoo/data/loader.py]="tests/test_mutants_training.py tests/test_data.py tests/test_mutants.py"
  [zoo/metrics/digits.py]="tests/test_mutants_metrics.py tests/test_metrics.py tests/test_fid_protocol.py"
  [zoo/metrics/frechet.py]="tests/test_mutants_metrics.py tests/test_digits_metrics.py"
  [zoo/metrics/held_out.py]="tests/test_mutants_metrics.py tests/test_digits_metrics.py"
  [zoo/metrics/memorisation.py]="tests/test_mutants_metrics.py tests/test_digits_metrics.py"
  [zoo/training/config.py]="tests/test_mutants_training.py tests/test_training.py tests/test_reliability.py"
  [zoo/training/rundir.py]="tests/test_mutants_training.py tests/test_reliability.py"
  [zoo/training/threads.py]="tests/test_mutants_training.py tests/test_reliability.py::test_thread_policy"
  [zoo/training/cost.py]="tests/test_mutants_training.py tests/test_training_cost.py"
  [plugins/zoo_ect/loss.py]="tests/test_ect.py"
  [plugins/zoo_scm/loss.py]="tests/test_scm.py"
  [plugins/zoo_scm/trigflow.py]="tests/test_scm.py"
)
# module -> the functions/methods mutated (cosmic-ray's innermost definition name); none: all.
# Registries, option parsing, presets and CLI glue are left to their own tests.
declare -A SCOPE=(
  [zoo/diffusion/samplers.py]="euler_step heun_step _delta check_sigmas sample_euler sample_heun sample_edm_stochastic sample_consistency __call__ generate"
  [zoo/diffusion/fast_samplers.py]="_eps dpm_solver_2_step dpm_solver_3_step phi _singlestep sample_dpm_solver_2 sample_dpm_solver_3 sample_dpm_solver_pp_2m _linear_multistep _ipndm_weights sample_ipndm lagrange_integrals sample_deis"
  [plugins/zoo_edm/method.py]="forward loss sigmas sample"
  [plugins/zoo_rf/flow.py]="interpolate velocity_target euler_grid forward sample_rf_euler make_pairs draw loss"
  [plugins/zoo_pd/method.py]="stage_plan pd_sigmas pd_target truncated_snr_weight sample_pd_euler loss"
  [zoo/metrics/digits.py]="features_and_logits forward shift train_classifier accuracy load_classifier"
  [zoo/training/config.py]="setting __post_init__ validate config_to_dict config_from_dict resume_config save_config"
  [plugins/zoo_ect/loss.py]="ect_stage mapping_n ect_dt pseudo_huber passes_per_sample times loss after_step"
  [plugins/zoo_scm/loss.py]="scm_tangent normalize_tangent tangent_warmup adaptive_weighted_loss passes_per_sample velocity loss after_step"
  [plugins/zoo_cm/loss.py]="ct_num_scales ct_target_ema karras_time inverse_karras_time_derivative weighting l2_distance l1_distance metric_hvp num_scales target_ema x_smaller loss after_step velocity tangent"
)
# Operators left out: on this code base's float tensors they raise instead of computing a
# wrong number (bitwise and shift operators, `~`, `not` on a tensor, `<` -> `is`), so any test
# reaching the line kills them and they measure nothing; %, // and ** as replacements are
# dropped to keep runs to hours: every arithmetic site keeps its three other +-*/ mutants.
EXCLUDED_OPERATORS='
  "core/ReplaceBinaryOperator_\\w+_(BitOr|BitAnd|BitXor|LShift|RShift|Mod|FloorDiv|Pow)$",
  "core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
  "core/ReplaceComparisonOperator_(Is|IsNot)_(Eq|NotEq|Lt|LtE|Gt|GtE)$",
  "core/ReplaceUnaryOperator_(UAdd|USub|Invert)_(Invert|Not)$",
'

copy_tree() {  # tracked and untracked-but-not-ignored files: what the tests see in the working tree
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$1" 2>/dev/null || true
}

write_config() {  # work module timeout tests...
  local work=$1 module=$2 timeout=$3; shift 3
  cat > "$work/cosmic-ray.toml" <<TOML
[cosmic-ray]
module-path = "$module"
timeout = $timeout
excluded-modules = []
test-command = "nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=$work:$work/plugins $PY -m pytest -x -q -p no:cacheprovider $*"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = [$EXCLUDED_OPERATORS]
TOML
}

baseline_timeout() {  # work tests... -> 4x the unmutated run's seconds, at least 30
  local work=$1; shift
  local start end
  start=$(date +%s)
  (cd "$work" && nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH="$work:$work/plugins" \
    "$PY" -m pytest -x -q -p no:cacheprovider "$@" > "$work/baseline.log" 2>&1) \
    || { tail -n 20 "$work/baseline.log"; echo "the tests fail unmutated: $*" >&2; return 1; }
  end=$(date +%s)
  echo $(( (end - start) * 4 > 30 ? (end - start) * 4 : 30 ))
}

skip_annotations() {  # session.sqlite module: under `from __future__ import annotations` an
  # annotation is never evaluated, so a mutant inside one is equivalent by construction
  "$PY" - "$@" <<'PY'
import ast, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
session, module = sys.argv[1], sys.argv[2]
tree = ast.parse(open(module).read())
if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
           and any(a.name == "annotations" for a in n.names) for n in tree.body):
    sys.exit(0)
spans = []
for node in ast.walk(tree):
    for ann in ([node.annotation] if isinstance(node, (ast.arg, ast.AnnAssign)) else []) + \
            ([node.returns] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []):
        if ann is not None:
            spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
with use_db(session, WorkDB.Mode.open) as db:
    inside = [item.job_id for item in db.pending_work_items
              if any(lo <= tuple(m.start_pos) < hi for m in item.mutations for lo, hi in spans)]
    db.set_multiple_results(inside, WorkResult(output="in an annotation",
                                               worker_outcome=WorkerOutcome.SKIPPED))
PY
}

skip_out_of_scope() {  # session.sqlite definition-names...
  "$PY" - "$@" <<'PY'
import sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
session, scope = sys.argv[1], set(sys.argv[2:])
with use_db(session, WorkDB.Mode.open) as db:
    out = [item.job_id for item in db.pending_work_items
           if any(m.definition_name not in scope for m in item.mutations)]
    db.set_multiple_results(out, WorkResult(output="out of scope", worker_outcome=WorkerOutcome.SKIPPED))
PY
}

keep_a_sample() {  # session.sqlite N module: keep N mutants drawn at random (seeded by the module's name)
  "$PY" - "$@" <<'PY'
import random, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
session, n, module = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with use_db(session, WorkDB.Mode.open) as db:
    pending = sorted(db.pending_work_items, key=lambda item: (item.mutations[0].start_pos, item.mutations[0].operator_name, item.mutations[0].occurrence))
    kept = set(i.job_id for i in random.Random(module).sample(pending, min(n, len(pending))))
    db.set_multiple_results([i.job_id for i in pending if i.job_id not in kept],
                            WorkResult(output="not in the sample", worker_outcome=WorkerOutcome.SKIPPED))
PY
}

report() {  # work name module
  local work=$1 name=$2 module=$3
  "$ROOT/.venv/bin/cr-report" "$work/session.sqlite" --show-pending > "$OUT/$name.txt" || true
  cp "$work/session.sqlite" "$OUT/$name.sqlite"
  sha256sum "$module" | cut -d' ' -f1 > "$OUT/$name.sha256"
  tail -n 4 "$OUT/$name.txt"
}

commit_of() {  # module -> short commit, +dirty when the module differs from it
  local c
  c=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- "$1" || c="$c+dirty"
  echo "$c"
}

run_one() {
  local module=$1; shift
  local name=${module//\//_} timeout
  work=$(mktemp -d "${TMPDIR:-/tmp}/zoo-mutation.XXXXXX")
  trap 'rm -rf "$work"' EXIT  # also when the baseline fails (the tests fail unmutated)
  commit_of "$module" > "$OUT/$name.commit"
  copy_tree "$work"
  timeout=$(baseline_timeout "$work" "$@")
  write_config "$work" "$module" "$timeout" "$@"
  (
    cd "$work"
    "$PY" -m cosmic_ray.cli init cosmic-ray.toml session.sqlite
    "$ROOT/.venv/bin/cr-filter-operators" session.sqlite cosmic-ray.toml
    # shellcheck disable=SC2086
    skip_annotations session.sqlite "$module"
    [ -z "${SCOPE[$module]:-}" ] || skip_out_of_scope session.sqlite ${SCOPE[$module]}
    [ -z "${MUTATION_SAMPLE:-}" ] || keep_a_sample session.sqlite "$MUTATION_SAMPLE" "$module"
    "$PY" -m cosmic_ray.cli exec cosmic-ray.toml session.sqlite
  )
  report "$work" "$name" "$module"
  rm -rf "$work"
}

rerun_survivors() {
  local module=$1; shift
  local name=${module//\//_} timeout
  [ -f "$OUT/$name.sqlite" ] || { echo "no earlier run of $module in $OUT" >&2; exit 2; }
  [ "$(sha256sum "$module" | cut -d' ' -f1)" = "$(cat "$OUT/$name.sha256")" ] \
    || { echo "$module changed since its last run: run it whole again (scripts/mutation.sh $module)" >&2; exit 2; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/zoo-mutation.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  copy_tree "$work"
  timeout=$(baseline_timeout "$work" "$@")
  write_config "$work" "$module" "$timeout" "$@"
  cp "$OUT/$name.sqlite" "$work/session.sqlite"
  "$PY" - "$work/session.sqlite" <<'PY'
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as db:
    db.execute("delete from work_results where test_outcome = 'SURVIVED'")
PY
  (cd "$work" && "$PY" -m cosmic_ray.cli exec cosmic-ray.toml session.sqlite)
  commit_of "$module" > "$OUT/$name.commit"
  report "$work" "$name" "$module"
  rm -rf "$work"
}

summary() {
  "$PY" - "$OUT" <<'PY'
import glob, os, sqlite3, sys
out = sys.argv[1]
print("| module | commit | mutants | killed | timeout | incompetent | survived | kill rate |")
print("|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "*.sqlite"))):
    db = sqlite3.connect(path)
    rows = db.execute("select r.worker_outcome, r.test_outcome from work_items w "
                      "left join work_results r on r.job_id = w.job_id").fetchall()
    ran = [r for r in rows if r[0] != "SKIPPED"]
    done = [r for r in ran if r[0] is not None]
    timeout = sum(r[0] == "TIMEOUT" for r in done)
    survived = sum(r[1] == "SURVIVED" for r in done)
    incompetent = sum(r[1] == "INCOMPETENT" for r in done)  # the mutant could not be run
    killed = len(done) - timeout - survived - incompetent
    module = db.execute("select module_path from mutation_specs limit 1").fetchone()[0]
    commit_file = path[:-len(".sqlite")] + ".commit"
    commit = open(commit_file).read().strip() if os.path.exists(commit_file) else "?"
    pending = f" ({len(ran) - len(done)} pending)" if len(done) < len(ran) else ""
    tested = len(done) - incompetent
    rate = f"{100 * (killed + timeout) / tested:.1f} %" if tested else "-"
    print(f"| `{module}` | {commit} | {len(done)}{pending} | {killed} | {timeout} | {incompetent} "
          f"| {survived} | {rate} |")
PY
}

case "${1:-}" in
  --summary) summary ;;
  --survivors)
    shift; module=$1; shift
    # shellcheck disable=SC2086
    if [ $# -ge 1 ]; then rerun_survivors "$module" "$@"; else rerun_survivors "$module" ${TESTS[$module]}; fi ;;
  "")
    # shellcheck disable=SC2086
    for module in "${!TESTS[@]}"; do run_one "$module" ${TESTS[$module]}; done ;;
  *)
    module=$1; shift
    # shellcheck disable=SC2086
    if [ $# -ge 1 ]; then run_one "$module" "$@"; else run_one "$module" ${TESTS[$module]}; fi ;;
esac
