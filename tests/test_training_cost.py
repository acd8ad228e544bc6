"""Training cost (zoo.training.cost): each method's declared passes against the network calls a
spy counts during a tiny run, teachers' costs in a row's total, resume, and the bench outputs."""

import json

import pytest
import torch
import zoo_cm.loss
import zoo_meanflow.loss
import zoo_scm.loss

import zoo.plugins
from zoo.bench import run_bench
from zoo.nets.mlp import MLPDenoiserNet
from zoo.training import load_checkpoint
from zoo.training.cost import BUDGETS, forward_equivalents, run_cost

BATCH, ITERATIONS = 8, 3
TINY = {"batch_size": BATCH, "iterations": ITERATIONS, "lr_warmup": 0, "checkpoint_every": 2,
        "log_every": 1, "network_kwargs": {"hidden": 16, "num_layers": 1}}


class Spy:
    """Counts, per sample, every forward call of the toy network (``MLPDenoiserNet``) and every
    backward pass through its output; a call inside ``torch.func.jvp`` (the methods' ``jvp``,
    patched) counts as two forward passes (primal and tangent)."""

    def __init__(self, monkeypatch):
        self.forward = self.backward = 0
        self.in_jvp = False
        for module in (zoo_cm.loss, zoo_meanflow.loss, zoo_scm.loss):
            monkeypatch.setattr(module, "jvp", self.wrap(module.jvp))

    def wrap(self, jvp):
        def counted(*args, **kwargs):
            self.in_jvp = True
            try:
                return jvp(*args, **kwargs)
            finally:
                self.in_jvp = False
        return counted

    def hook(self, module, args, output):
        if type(module) is not MLPDenoiserNet:
            return
        n = args[0].shape[0]
        self.forward += 2 * n if self.in_jvp else n
        if output.requires_grad:
            output.register_hook(lambda grad: self.count_backward(grad.shape[0]))

    def count_backward(self, n):
        self.backward += n

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def train(name, run_dir, monkeypatch, **overrides):
    """Train a tiny toy run of method ``name`` into ``run_dir`` under a :class:`Spy`."""
    method = zoo.plugins.get("methods", name)
    config = method.configure("toy", **{**TINY, **overrides})
    with Spy(monkeypatch) as spy:
        method.train(config, run_dir, progress=False)
    return spy


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cost") / "runs" / "toy" / "edm"
    with pytest.MonkeyPatch.context() as mp:
        spy = train("edm", run_dir, mp)
    return run_dir, spy


def own_cost(run_dir):
    return load_checkpoint(run_dir)["cost"]


def test_edm_records_one_forward_and_backward_pass_per_image(teacher):
    run_dir, spy = teacher
    images = ITERATIONS * BATCH
    assert own_cost(run_dir) == {"images": images, "forward": spy.forward,
                                 "backward": spy.backward}
    assert (spy.forward, spy.backward) == (images, images)
    assert run_cost(run_dir) == own_cost(run_dir)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    assert (last["train_images"], last["train_forward"]) == (images, images)


@pytest.mark.parametrize("overrides", [
    {"mode": "cd", "solver": "heun"}, {"mode": "cd", "solver": "euler"}, {"mode": "ct"},
    {"mode": "cd-cont"}, {"mode": "ct-cont"}], ids=lambda o: "-".join(o.values()))
def test_cm_recorded_cost_is_what_the_spy_counts_and_adds_the_teacher(
        teacher, tmp_path, monkeypatch, overrides):
    teacher_dir, _ = teacher
    spy = train("cm", tmp_path / "cm", monkeypatch, teacher=str(teacher_dir), **overrides)
    cost = own_cost(tmp_path / "cm")
    assert cost == {"images": ITERATIONS * BATCH, "forward": spy.forward,
                    "backward": spy.backward}
    total = run_cost(tmp_path / "cm")
    config = load_checkpoint(tmp_path / "cm")["config"]
    if overrides["mode"].startswith("cd") or config["init"] == "teacher":
        # distilled or started from the teacher's weights: the EDM teacher's run is part of it
        assert total == {k: cost[k] + own_cost(teacher_dir)[k] for k in cost}
    else:  # CT from random weights: no teacher
        assert config["teacher"] == "" and total == cost


def test_pd_stages_add_the_previous_stages_and_the_teacher(teacher, tmp_path, monkeypatch):
    teacher_dir, _ = teacher
    spy = train("pd", tmp_path / "pd", monkeypatch, teacher=str(teacher_dir), teacher_steps=4)
    stage0, stage1 = tmp_path / "pd" / "stage-0-nfe-2", tmp_path / "pd" / "stage-1-nfe-1"
    assert own_cost(stage0)["forward"] + own_cost(stage1)["forward"] == spy.forward
    assert own_cost(stage0)["backward"] + own_cost(stage1)["backward"] == spy.backward
    assert own_cost(stage1) == {"images": ITERATIONS * BATCH, "forward": 3 * ITERATIONS * BATCH,
                                "backward": ITERATIONS * BATCH}
    parts = [own_cost(d) for d in (stage1, stage0, teacher_dir)]
    assert run_cost(stage1) == {k: sum(p[k] for p in parts) for k in parts[0]}


def test_reflow_adds_its_pairs_and_the_first_flow(tmp_path, monkeypatch):
    flow_spy = train("rf", tmp_path / "rf", monkeypatch)
    spy = train("rf", tmp_path / "rf-reflow", monkeypatch, mode="reflow",
                teacher=str(tmp_path / "rf"), reflow_pairs=40, reflow_steps=3)
    assert (flow_spy.forward, flow_spy.backward) == (ITERATIONS * BATCH,) * 2
    cost = own_cost(tmp_path / "rf-reflow")
    assert cost == {"images": ITERATIONS * BATCH, "forward": spy.forward,
                    "backward": spy.backward}
    assert spy.forward == 40 * 3 + ITERATIONS * BATCH  # the pairs' Euler steps, then training
    first = own_cost(tmp_path / "rf")
    assert run_cost(tmp_path / "rf-reflow") == {k: cost[k] + first[k] for k in cost}


def test_meanflow_counts_its_jvp_as_two_forward_passes(tmp_path, monkeypatch):
    spy = train("meanflow", tmp_path / "mf", monkeypatch)
    assert own_cost(tmp_path / "mf") == {"images": ITERATIONS * BATCH, "forward": spy.forward,
                                         "backward": spy.backward}
    assert (spy.forward, spy.backward) == (3 * ITERATIONS * BATCH, ITERATIONS * BATCH)


@pytest.mark.parametrize("name, overrides, passes", [
    ("ect", {}, (2, 1)), ("scm", {"mode": "sct"}, (3, 1)), ("scm", {"mode": "scd"}, (4, 1))],
    ids=["ect", "sct", "scd"])
def test_ect_and_scm_record_what_the_spy_counts_and_add_the_teacher(
        teacher, tmp_path, monkeypatch, name, overrides, passes):
    teacher_dir, _ = teacher
    spy = train(name, tmp_path / name, monkeypatch, teacher=str(teacher_dir), **overrides)
    images = ITERATIONS * BATCH
    cost = own_cost(tmp_path / name)
    assert cost == {"images": images, "forward": spy.forward, "backward": spy.backward}
    assert (spy.forward, spy.backward) == (passes[0] * images, passes[1] * images)
    assert run_cost(tmp_path / name) == {k: cost[k] + own_cost(teacher_dir)[k] for k in cost}


#: Every few-step method's digits preset: (method, mode, what it starts from). From the teacher
#: (distilled, tuned, or started from its weights): the student budget; from nothing: the
#: teacher's and the student's; 1-RF is the teacher of 2-RF: the teacher's.
DIGITS_RUNS = [("cm", "cd", "teacher"), ("cm", "ct", "nothing"), ("cm", "cd-cont", "teacher"),
               ("cm", "ct-cont", "teacher"), ("pd", None, "teacher"), ("rf", None, "is teacher"),
               ("rf", "reflow", "teacher"), ("meanflow", None, "nothing"), ("ect", None, "teacher"),
               ("scm", "sct", "teacher"), ("scm", "scd", "teacher")]


@pytest.mark.parametrize("name, mode, start", DIGITS_RUNS,
                         ids=[f"{n}-{m}" if m else n for n, m, _ in DIGITS_RUNS])
def test_digits_presets_spend_one_common_budget(teacher, tmp_path, monkeypatch, name, mode,
                                                start):
    """The passes per sample a tiny run of the preset's mode records (the spy tests above check
    them), times the digits preset's iterations, batch and stages, plus its one-off passes,
    spend the budget within one iteration."""
    teacher_dir, _ = teacher
    mode_opts = {"mode": mode} if mode else {}
    toy = dict(mode_opts)
    if start == "teacher" and name != "rf":
        toy["teacher"] = str(teacher_dir)
    if name == "pd":
        toy["teacher_steps"] = 2
    if mode == "reflow":
        train("rf", tmp_path / "rf", monkeypatch)
        toy.update(teacher=str(tmp_path / "rf"), reflow_pairs=4, reflow_steps=2)
    train(name, tmp_path / "run", monkeypatch, **toy)
    run = tmp_path / "run" / "stage-0-nfe-1" if name == "pd" else tmp_path / "run"
    cost = own_cost(run)
    setup = 4 * 2 if mode == "reflow" else 0  # the pairs' Euler steps, forward only
    per_sample = forward_equivalents({**cost, "forward": cost["forward"] - setup}) / cost["images"]
    config = zoo.plugins.get("methods", name).configure("digits", **mode_opts)
    stages = config.teacher_steps.bit_length() - 1 if name == "pd" else 1
    one_off = config.reflow_pairs * config.reflow_steps if mode == "reflow" else 0
    budget = {"teacher": BUDGETS["digits"]["student"], "nothing": sum(BUDGETS["digits"].values()),
              "is teacher": BUDGETS["digits"]["teacher"]}[start]
    iteration = config.batch_size * per_sample * stages
    spent = config.iterations * iteration + one_off
    assert budget - iteration < spent <= budget


def test_resume_continues_the_count(tmp_path, monkeypatch):
    method = zoo.plugins.get("methods", "edm")
    train("edm", tmp_path / "whole", monkeypatch, iterations=4)
    train("edm", tmp_path / "split", monkeypatch, iterations=2)
    method.resume(tmp_path / "split", {"iterations": 4}, progress=False, echo=lambda m: None)
    assert own_cost(tmp_path / "split") == own_cost(tmp_path / "whole") == {
        "images": 4 * BATCH, "forward": 4 * BATCH, "backward": 4 * BATCH}


def test_a_run_without_a_cost_record_has_no_cost(teacher, tmp_path, monkeypatch):
    from zoo.training import save_checkpoint

    teacher_dir, _ = teacher
    train("cm", tmp_path / "cm", monkeypatch, teacher=str(teacher_dir), mode="cd")
    state = load_checkpoint(teacher_dir)
    save_checkpoint({**state, "cost": None}, tmp_path / "edm" / "checkpoint.pt")
    state = load_checkpoint(tmp_path / "cm")
    state["config"]["teacher"] = str(tmp_path / "edm")
    save_checkpoint(state, tmp_path / "cm" / "checkpoint.pt")
    assert run_cost(tmp_path / "cm") is None


def test_bench_outputs_carry_the_cost_and_plot_quality_against_it(teacher, monkeypatch):
    teacher_dir, _ = teacher
    root = teacher_dir.parent.parent
    out = root.parent / "out"
    train("pd", root / "toy" / "pd", monkeypatch, teacher=str(teacher_dir), teacher_steps=4)
    report = run_bench(["pd"], "toy", runs_root=root, n=32, batch_size=32, out=out,
                       progress=False, echo=lambda m: None)
    record = json.loads((out / "table.json").read_text())
    for row, result in zip(record["rows"], report.results, strict=True):
        stage = root / "toy" / "pd" / f"stage-{2 - row['nfe']}-nfe-{row['nfe']}"
        cost = run_cost(stage)
        assert row["training_cost"] == {**cost, "forward_equivalents": forward_equivalents(cost)}
        assert result.cost == cost
    assert "train Mimg" in (out / "table.md").read_text()
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert {"train_images", "train_forward", "train_backward",
            "train_forward_equivalents"} <= set(header)
    assert (out / "metric_vs_cost.png").stat().st_size > 0


def test_the_cost_axis_is_logarithmic_only_over_a_decade_or_more():
    from zoo.bench import cost_axis_scale

    assert cost_axis_scale([2.3e6, 3.84e6]) == "linear"  # the cost-matched digits rows
    assert cost_axis_scale([3.8e6, 3.8e7 - 1]) == "linear"
    assert cost_axis_scale([3.8e6, 3.8e7]) == "log"
    assert cost_axis_scale([4.6e6, 1.2e7, 3.5e7, 5e5]) == "log"  # the toy rows
    assert cost_axis_scale([0.0, 3.84e6]) == "linear"  # untrained weights: kept on the axis


def test_budget_iterations_round_down_and_refuse_a_budget_below_one_iteration():
    from zoo.training.cost import budget_iterations

    passes = {"forward": 2, "backward": 1}  # 4 forward-equivalents per sample
    assert budget_iterations(4 * 10 * 7 + 39, 10, passes) == 7
    assert budget_iterations(4 * 10 * 7 + 40, 10, passes, stages=2) == 4  # 80 an iteration
    setup = {"forward": 100, "backward": 0}
    assert budget_iterations(100 + 4 * 10 * 3, 10, passes, setup=setup) == 3
    with pytest.raises(ValueError, match="does not cover one iteration"):
        budget_iterations(39, 10, passes)


#: The digits iterations the README and docs/methods/ state, by hand: the teacher's budget is EDM's
#: 6000 iterations of batch 128 (3 forward-equivalents a sample); the student's, CD's 2000 at 6.
DOCUMENTED_DIGITS_ITERATIONS = {
    ("edm", None): 6000, ("cm", "cd"): 2000, ("cm", "cd-cont"): 2000, ("cm", "ct-cont"): 2400,
    ("cm", "ct"): 7500, ("pd", None): 600, ("rf", None): 6000, ("rf", "reflow"): 2697,
    ("meanflow", None): 6000, ("ect", None): 3000, ("scm", "sct"): 2400, ("scm", "scd"): 2000,
}


def test_the_digits_budgets_are_edms_and_cds_runs_and_give_the_documented_iterations():
    assert BUDGETS["digits"] == {"teacher": 6000 * 128 * 3, "student": 2000 * 128 * 6}
    for (name, mode), iterations in DOCUMENTED_DIGITS_ITERATIONS.items():
        config = zoo.plugins.get("methods", name).configure("digits",
                                                            **({"mode": mode} if mode else {}))
        assert (config.iterations, config.batch_size) == (iterations, 128), (name, mode)
