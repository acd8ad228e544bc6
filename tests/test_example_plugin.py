"""The example third-party plugin (examples/zoo-ict) built and installed with pip, offline, then
found through its real entry point by ``zoo plugins`` and ``zoo bench``; a second distribution
that clashes with it is reported by name and the first keeps working."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zoo.training import save_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "zoo-ict"

# Test-size presets for a whole `zoo bench --models cm,ict --train-missing`, then the real CLI.
BENCH_DRIVER = """
import sys
import zoo_cm.method, zoo_edm.method, zoo_ict.method
from zoo.cli import main

tiny = {"batch_size": 64, "network_kwargs": {"hidden": 16, "num_layers": 1},
        "checkpoint_every": 10, "log_every": 10}
zoo_edm.method.PRESETS["toy"].update(tiny, iterations=20, lr_warmup=0)
zoo_cm.method.PRESETS["toy"]["common"].update(tiny)
for mode in ("cd", "ct"):
    zoo_cm.method.PRESETS["toy"][mode].update(iterations=10)
# iCT: 100 steps, enough to beat its step-0 weights (kept as checkpoint-prev.pt: one save at
# step 0, one at the end)
zoo_ict.method.PRESETS["toy"].update(tiny, iterations=100, checkpoint_every=1000)
main(sys.argv[1:])
"""

CLASH = """
from zoo.hookspecs import hookimpl
from zoo_ict.method import ImprovedConsistencyTrainingMethod

@hookimpl
def register_methods(register):
    register("ict", ImprovedConsistencyTrainingMethod())
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """examples/zoo-ict installed with pip into a fresh directory: its wheel is built from a copy
    of the source (no build files in the repository), without network or build isolation."""
    pytest.importorskip("setuptools", reason="building the example needs setuptools installed")
    root = tmp_path_factory.mktemp("example")
    source = shutil.copytree(EXAMPLE, root / "zoo-ict", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check", "--quiet",
                    "--target", str(site), str(source)], check=True, timeout=300)
    assert (site / "zoo_ict" / "__init__.py").exists()
    return site


def zoo(site, *args, extra_env=None, cwd=None, timeout=300):
    """The `zoo` CLI in a subprocess that sees ``site`` (and so its entry points) first."""
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("ZOO_DISABLE_PLUGINS", None)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_installed_plugin_is_listed(site):
    out = zoo(site, "-m", "zoo.cli", "plugins", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    ict = {p["name"]: p for p in listing["plugins"]}["ict"]
    assert (ict["distribution"], ict["version"]) == ("zoo-ict", "0.1.0")
    assert ict["hooks"] == ["register_methods"]
    assert listing["registered"]["methods"]["ict"] == "ict (zoo-ict)"
    assert {"cm", "edm", "pd", "ict"} <= set(listing["registered"]["methods"])
    assert listing["failures"] == []
    help_text = zoo(site, "-m", "zoo.cli", "train", "ict", "--help").stdout
    assert "--huber-c-per-dim" in help_text and "--s1" in help_text


def test_clashing_plugin_is_reported_and_blocking_works(site, tmp_path):
    shutil.copytree(site, tmp_path / "site")
    clash_site = tmp_path / "site"
    (clash_site / "zoo_ict_fork.py").write_text(textwrap.dedent(CLASH))
    info = clash_site / "zoo_ict_fork-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-ict-fork\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[zoo]\nict_fork = zoo_ict_fork\n")
    out = zoo(clash_site, "-m", "zoo.cli", "plugins")
    assert out.returncode == 0, out.stderr
    # two third-party plugins claiming one name: both refused, each naming the other, until
    # the user chooses one (the policy of docs/plugins.md), whatever their names' order
    assert "FAILED ict_fork (zoo-ict-fork)" in out.stdout
    assert "FAILED ict (zoo-ict)" in out.stdout
    assert "method 'ict' is also registered by ict_fork" in out.stdout
    assert "method 'ict' is also registered by ict: both are refused" in out.stdout
    blocked = zoo(clash_site, "-m", "zoo.cli", "plugins", "--json",
                  extra_env={"ZOO_DISABLE_PLUGINS": "ict_fork"})
    listing = json.loads(blocked.stdout)
    assert listing["failures"] == [] and "ict" in listing["registered"]["methods"]


def test_bench_puts_the_plugin_beside_first_party_methods(site, tmp_path):
    out = zoo(site, "-c", BENCH_DRIVER, "bench", "--models", "cm,ict", "--dataset", "toy",
              "--train-missing", "--n", "64", "--batch-size", "32", "--no-progress",
              "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "runs/toy/ict" in out.stderr  # trained because missing
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    rows = [(r["method"], r["label"], r["nfe"]) for r in table["rows"]]
    assert rows == [("cm", "CD (L2)", 1), ("cm", "CD (L2)", 2), ("cm", "CT (L2)", 1),
                    ("cm", "CT (L2)", 2), ("ict", "iCT", 1), ("ict", "iCT", 2)]
    assert "iCT" in out.stdout and "CT (L2)" in out.stdout
    # The plugin's training has to show in the table: the same bench on a copy of the iCT run
    # holding its step-0 weights. Measured over training seeds 0-4 (n=64, floor 0.242): W2 at
    # 1 step 0.427-0.451 trained against 0.777 untrained (ratio 0.55-0.58), at 2 steps
    # 0.283-0.303 against 0.531 (0.53-0.57); with training disabled the ratio is 1.
    shutil.copytree(tmp_path / "runs", tmp_path / "untrained")
    run = tmp_path / "untrained" / "toy" / "ict"
    state = torch.load(run / "checkpoint-prev.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 0
    save_checkpoint({**state, "step": 100}, run / "checkpoint.pt")  # benchable as finished
    out = zoo(site, "-c", BENCH_DRIVER, "bench", "--models", "ict", "--dataset", "toy",
              "--runs-root", "untrained", "--n", "64", "--batch-size", "32", "--no-progress",
              "--out", "out0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    untrained = json.loads((tmp_path / "out0" / "table.json").read_text())["rows"]
    trained = [r for r in table["rows"] if r["method"] == "ict"]
    assert [(r["label"], r["nfe"]) for r in untrained] == [("iCT", 1), ("iCT", 2)]
    for a, b in zip(trained, untrained, strict=True):
        assert a["metrics"]["W2"] < 0.75 * b["metrics"]["W2"], (a, b)
