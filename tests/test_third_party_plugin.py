"""A third-party plugin, installed the way pip installs a distribution, in ``zoo bench``.

``tests/data/zoo_thirdparty`` registers, through the public API only, a dataset declaring its
σ_data, a network, a sampler with an option, a metric and a method. The test gives a ``zoo``
subprocess a ``*.dist-info`` folder carrying the entry point of the package's
``pyproject.toml`` (what ``pip install`` writes), and runs ``zoo bench`` with the plugin's
dataset, metric and sampler; the metric is checked against a numpy computation on the saved
samples.
"""

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "data" / "zoo_thirdparty"
#: What the plugin may import from zoo: docs/plugin-api.md section 9.
PUBLIC = {
    "zoo": {"API_VERSION", "__version__", "hookimpl"},
    "zoo.data": {"Dataset", "load_dataset", "dataset_sigma_data", "data_dir"},
    "zoo.diffusion": {"Denoiser", "expand_sigma", "karras_sigmas", "append_zero", "SIGMA_DATA",
                      "SIGMA_MIN", "SIGMA_MAX", "StackedGenerator"},
    "zoo.diffusion.samplers": {"generate", "run_sampler", "NFECounter"},
    "zoo.methods": {"Method", "Samples", "Run", "BenchRow", "preset_scale"},
    "zoo.training": {"TrainConfig", "setting", "TrainingTask", "BatchNoise"},
}


def install(site: Path) -> None:
    """What ``pip install`` writes for the plugin's package into ``site`` (the package itself
    stays in tests/data): a dist-info folder with its name, version and the entry points of the
    ``[project.entry-points.zoo]`` table of its pyproject.toml (``name = "module"`` lines)."""
    text = (PLUGIN / "pyproject.toml").read_text()
    name = re.search(r'^name = "(.+)"', text, re.M)[1]
    version = re.search(r'^version = "(.+)"', text, re.M)[1]
    table = re.search(r"^\[project\.entry-points\.zoo\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)[1]
    points = re.findall(r'^(\S+) = "(\S+)"$', table, re.M)
    assert points, "no zoo entry point in the plugin's pyproject.toml"
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[zoo]\n" + "".join(f"{k} = {v}\n" for k, v in points))


def zoo_cli(args, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(site), str(PLUGIN), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", "from zoo.cli import main; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_plugin_imports_only_the_public_api():
    tree = ast.parse((PLUGIN / "zoo_thirdparty" / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("zoo"):
            assert {a.name for a in node.names} <= PUBLIC[node.module], node.module
        elif isinstance(node, ast.Import):
            assert all(a.name in ("torch", "zoo") or not a.name.startswith("zoo")
                       for a in node.names)


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """``zoo bench`` with the plugin's method, its sampler on the first-party EDM (with an
    option), its dataset and its metric, from nothing."""
    work = tmp_path_factory.mktemp("thirdparty")
    install(work / "site")
    args = ["bench", "--models", "tp-diffusion,edm:tp-midpoint", "--dataset", "annulus",
            "--metrics", "w2,radius-error", "--train-missing", "--n", "200",
            "--batch-size", "200", "--sampler-options", 'edm:tp-midpoint={"clip": 1.6}',
            "--set", "edm.iterations=100", "--set", "edm.batch_size=128",
            "--set", 'edm.network_kwargs={"hidden": 32, "num_layers": 2}',
            "--set", "edm.lr_warmup=0", "--set", "edm.checkpoint_every=1000",
            "--device", "cpu", "--no-progress", "--out", "out"]
    result = zoo_cli(args, work / "site", work)
    assert result.returncode == 0, result.stdout + result.stderr
    return work, result.stdout


def test_bench_shows_the_plugins_metric_and_sampler(benched):
    work, output = benched
    header = output.splitlines()[2]
    assert "W2↓" in header and "radius error↓" in header, output
    assert "EDM (tp-midpoint, clip=1.6)" in output and "TP (tp-midpoint)" in output
    rows = json.loads((work / "out" / "table.json").read_text())["rows"]
    edm_rows = [r for r in rows if r["method"] == "edm"]
    # the midpoint rule costs 2N − 1 NFE: the rows at the most steps within 1, 3, 5, 10, 20, 35
    assert [r["nfe"] for r in edm_rows] == [1, 3, 5, 9, 19, 35]
    assert [r["nfe"] for r in rows if r["method"] == "tp-diffusion"] == [3, 7]
    for row in rows:
        saved = np.load(work / "out" / row["samples_file"])
        x, info = saved["arr_0"], json.loads(str(saved["info"]))
        assert x.shape == (200, 2) and info["sampler"] == row["sampler"] == "tp-midpoint"
        radius = abs(np.linalg.norm(x.astype(np.float64), axis=1).mean() - math.sqrt(2))
        assert row["metrics"]["radius error"] == pytest.approx(radius, rel=1e-5, abs=1e-7)
        if row["method"] == "edm":  # the option reached the sampler
            assert np.abs(x).max() <= 1.6 and info["options"]["sampler_options"] == {"clip": 1.6}


def test_the_datasets_sigma_data_reached_the_methods_configs(benched):
    work, _ = benched
    for run in ("edm", "tp-diffusion"):
        config = json.loads((work / "runs" / "annulus" / run / "config.json").read_text())
        assert config["sigma_data"] == 1.0 and config["dataset"] == "annulus"
    tp = json.loads((work / "runs" / "annulus" / "tp-diffusion" / "config.json").read_text())
    assert tp["network"] == "ring-net"


def test_rescore_with_the_plugins_metric_alone(benched):
    work, _ = benched
    before = json.loads((work / "out" / "table.json").read_text())["rows"]
    result = zoo_cli(["bench", "--rescore", "--dataset", "annulus", "--metrics",
                      "radius-error", "--out", "out"], work / "site", work)
    assert result.returncode == 0, result.stdout + result.stderr
    after = json.loads((work / "out" / "table.json").read_text())["rows"]
    assert [r["metrics"] for r in after] == [{"radius error": r["metrics"]["radius error"]}
                                             for r in before]
