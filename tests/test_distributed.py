"""DDP on CPU (gloo, two processes launched by torchrun): the weights after a few steps equal one
process's with the same global batch, also for the JVP-based continuous-time CM objective (whose
gradients must still be synchronised); kill-and-resume continues with 2 or 1 processes; sharded
sampling gathers the same samples as one process.

This file is also the worker: ``torchrun --nproc_per_node=2 tests/test_distributed.py OUT``.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from interrupt import Killed
from interrupt import kill_at as kill_at_step
from zoo_cm.loss import ContinuousConsistency

import zoo.plugins
from zoo import distributed
from zoo.data import load_dataset
from zoo.diffusion import append_zero, karras_sigmas
from zoo.diffusion.samplers import generate, sample_heun
from zoo.training import Trainer, load_checkpoint

TINY = dict(network_kwargs={"hidden": 32, "num_layers": 2}, batch_size=64, lr=1e-3,
            lr_warmup=2, ema_rate=0.9, checkpoint_every=3, log_every=3, iterations=6,
            dataset_options={"n": 2000})
CONFIGS = {"edm": ("edm", {}), "ct-cont": ("cm", dict(mode="ct-cont", init="random", teacher=""))}
ATOL = 1e-6


class SkipsDDP(ContinuousConsistency):
    """The known trap, on purpose: the online pass through ``net.module`` bypasses DDP, so its
    gradients are never averaged over the processes."""

    def loss(self, net, x, labels, noise):
        return super().loss(getattr(net, "module", net), x, labels, noise)


def train(name, run_dir, *, task_class=None, kill_at=None, resume=False):
    method_name, overrides = CONFIGS[name]
    method = zoo.plugins.get("methods", method_name)
    config = method.configure("toy", **TINY, **overrides)
    config.method = method.name
    dataset = load_dataset(config.dataset, **config.dataset_options)
    task = method.make_task(config, dataset)
    if task_class is not None:
        task.__class__ = task_class
    Trainer(task, config, dataset, run_dir, progress=False).fit(resume=resume,
                                                               on_step=kill_at_step(kill_at))


def heun_sigmas():
    return append_zero(karras_sigmas(4, 0.002, 80.0, 7.0))


def sample_tiny(seeds):
    """Samples of an untrained toy EDM denoiser (the same initial weights in every process)."""
    method = zoo.plugins.get("methods", "edm")
    denoiser = method.build_denoiser(method.configure("toy", **TINY), (2,)).eval()
    return generate(denoiser, sample_heun, heun_sigmas(), (2,), seeds, batch_size=2)[0]


def rank_1_late():
    """Rank 1 reaches the start of training 2 s after rank 0 (a slow process or file system)."""
    start = Trainer._start

    def late_start(self, resume):
        if self.rank == 1:
            time.sleep(2)
        return start(self, resume)

    return mock.patch.object(Trainer, "_start", late_start)


def worker(out: Path) -> None:
    """Every scenario under one torchrun launch (starting processes is the slow part)."""
    distributed.init_distributed()
    train("edm", out / "edm")
    train("ct-cont", out / "ct-cont")
    train("ct-cont", out / "ct-cont-skips-ddp", task_class=SkipsDDP)
    with rank_1_late():
        train("edm", out / "rank-1-late")
    try:
        train("edm", out / "killed", kill_at=5)
    except Killed:
        pass
    distributed.barrier()
    if distributed.is_main():
        shutil.copytree(out / "killed", out / "killed-for-1")
    train("edm", out / "killed", resume=True)
    samples = sample_tiny(range(7))  # 7 seeds over 2 ranks: shards of 4 and 3
    if distributed.is_main():
        torch.save(samples, out / "samples.pt")
        (out / "world.json").write_text(json.dumps({"world_size": distributed.world_size()}))


def torchrun(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *map(str, args)]
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torchrun(__file__, out)
    assert json.loads((out / "world.json").read_text()) == {"world_size": 2}
    return out


def assert_same_weights(run_a, run_b, atol=ATOL):
    a, b = load_checkpoint(run_a), load_checkpoint(run_b)
    assert a["step"] == b["step"]
    for part in ("net", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=atol,
                                       msg=lambda m, k=f"{part}.{key}": f"{k}: {m}")


def max_weight_difference(run_a, run_b) -> float:
    a, b = load_checkpoint(run_a)["net"], load_checkpoint(run_b)["net"]
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("name", ["edm", "ct-cont"])
def test_two_processes_equal_one_with_the_same_global_batch(two_procs, tmp_path, name):
    train(name, tmp_path / name)
    assert_same_weights(two_procs / name, tmp_path / name)


def test_a_late_rank_joins_the_run_rank_0_started(two_procs, tmp_path):
    """Rank 1 arriving after rank 0 has written the new run's step-0 checkpoint trains that run
    (it used to take the checkpoint for a previous run's and stop the launch)."""
    train("edm", tmp_path / "one")
    assert_same_weights(two_procs / "rank-1-late", tmp_path / "one")


def test_jvp_objective_skipping_ddp_would_not_synchronise(two_procs, tmp_path):
    """The same CT∞ loss with its online pass on ``net.module`` drifts away from one process:
    so the equality above is a real check of gradient synchronisation."""
    train("ct-cont", tmp_path / "one")
    assert max_weight_difference(two_procs / "ct-cont-skips-ddp", tmp_path / "one") > 100 * ATOL


def test_kill_and_resume_under_two_processes_continues_the_run(two_procs, tmp_path):
    assert_same_weights(two_procs / "killed", two_procs / "edm", atol=0)
    # The checkpoint of 2 processes, resumed by 1, ends where one straight process ends.
    shutil.copytree(two_procs / "killed-for-1", tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed")["step"] == 3
    train("edm", tmp_path / "resumed", resume=True)
    train("edm", tmp_path / "straight")
    assert_same_weights(tmp_path / "resumed", tmp_path / "straight")


def test_sharded_sampling_gathers_the_single_process_samples(two_procs):
    torch.testing.assert_close(torch.load(two_procs / "samples.pt"), sample_tiny(range(7)),
                               rtol=0, atol=0)


def test_zoo_train_under_torchrun(tmp_path):
    """``torchrun ... -m zoo.cli train edm``: the CLI joins the process group by itself."""
    options = {f"--{k.replace('_', '-')}": json.dumps(v) if isinstance(v, dict) else v
               for k, v in TINY.items()}
    torchrun("-m", "zoo.cli", "train", "edm", "--dataset", "toy", "--run-dir", tmp_path / "cli",
             "--no-progress", *[str(x) for kv in options.items() for x in kv])
    train("edm", tmp_path / "one")
    assert_same_weights(tmp_path / "cli", tmp_path / "one")
    rows = [json.loads(line) for line in (tmp_path / "cli" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6]  # rank 0 alone writes the log
    assert [r["world_size"] for r in rows if r.get("event") == "start"] == [2]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
