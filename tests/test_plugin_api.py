"""The plugin API as documented: the docs' snippets run, zoo.hookimpl, re-registration,
disabled plugins in `zoo plugins`, and datasets that declare their σ_data."""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoo
import zoo.hookspecs
import zoo.plugins
from zoo.cli import main
from zoo.data import Dataset, dataset_sigma_data

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets(doc: Path) -> list[str]:
    return BLOCK.findall(doc.read_text())


def run_snippets(doc: Path, module_name: str) -> None:
    """Execute the ```python blocks of ``doc`` in order, as the module ``module_name``."""
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    try:
        for i, code in enumerate(snippets(doc)):
            exec(compile(code, f"{doc.name} python block {i + 1}", "exec"), module.__dict__)
    finally:
        del sys.modules[module_name]


def test_plugin_api_reference_snippets_run(tmp_path, monkeypatch):
    doc = ROOT / "docs" / "plugin-api.md"
    assert len(snippets(doc)) >= 10
    monkeypatch.chdir(tmp_path)
    run_snippets(doc, "zoo_ring")
    assert (tmp_path / "runs" / "ring" / "tiny" / "checkpoint.pt").exists()
    assert "tiny" not in zoo.plugins.registry("methods")  # the last snippet unregistered it


def test_plugin_guide_snippets_run(tmp_path, monkeypatch):
    """docs/plugins.md: its snippets run; the one that is a plugin's test passes under pytest."""
    example = ROOT / "examples" / "zoo-ict"
    blocks = snippets(ROOT / "docs" / "plugins.md")
    tests = [code for code in blocks if "\ndef test_" in code]
    assert len(blocks) >= 3 and len(tests) == 1
    monkeypatch.syspath_prepend(str(example))
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("zoo_guide_snippets")
    for i, code in enumerate(b for b in blocks if b not in tests):
        exec(compile(code, f"plugins.md python block {i + 1}", "exec"), module.__dict__)
    (tmp_path / "test_guide_snippet.py").write_text(tests[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "test_guide_snippet.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr


def test_hookimpl_is_exported():
    assert zoo.hookimpl is zoo.hookspecs.hookimpl

    class Plugin:
        @zoo.hookimpl
        def register_samplers(self, register):
            register("identity", lambda denoiser, x, sigmas, *, generator=None: x)

    zoo.plugins.register_plugin(Plugin(), "in-test")
    assert "identity" in zoo.plugins.registry("samplers")


def test_registering_an_installed_plugin_again_is_a_no_op(tmp_path, monkeypatch):
    """The docs' test snippet registers the module itself; when its distribution is also
    installed (found through the entry point under another name) nothing happens."""
    (tmp_path / "zoo_twice_plugin.py").write_text(
        "import zoo\n\n@zoo.hookimpl\ndef register_samplers(register):\n"
        "    register('twice', lambda denoiser, x, sigmas, *, generator=None: 2 * x)\n")
    info = tmp_path / "zoo_twice-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-twice\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[zoo]\ntwice = zoo_twice_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    zoo.plugins.reset()
    import zoo_twice_plugin

    assert "twice" in zoo.plugins.registry("samplers")
    zoo.plugins.register_plugin(zoo_twice_plugin, "zoo_twice_plugin")
    zoo.plugins.register_plugin(zoo_twice_plugin, "twice")
    assert "twice" in zoo.plugins.registry("samplers") and not zoo.plugins.failures()
    with pytest.raises(zoo.plugins.DuplicateNameError,
                       match=r"plugin name 'twice' is taken by another plugin \(zoo-twice\)"):
        zoo.plugins.register_plugin(types.SimpleNamespace(), "twice")


def test_plugins_command_lists_disabled_plugins(monkeypatch):
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "pd,nonexistent")
    zoo.plugins.reset()
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    line = rf"^pd  \({zoo.DISTRIBUTION} \S+\)  disabled \(ZOO_DISABLE_PLUGINS\)$"
    assert re.search(line, result.output, re.M)
    assert "methods: " in result.output and "pd" not in result.output.split("methods: ")[1]
    zoo.plugins.reset()
    # stdout alone: a broken plugin installed beside zoo warns on stderr, never into the JSON
    report = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)
    assert report["disabled"] == [{"name": "pd", "distribution": zoo.DISTRIBUTION,
                                   "version": zoo.__version__}]
    assert "pd" not in {p["name"] for p in report["plugins"]}
    monkeypatch.delenv("ZOO_DISABLE_PLUGINS")
    zoo.plugins.reset()
    assert json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)["disabled"] == []


def unit_gaussian(n: int = 1000, seed: int = 0) -> Dataset:
    import torch

    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return Dataset("unit", x, None, "unit-checksum", "points")


@pytest.fixture
def unit_dataset():
    unit_gaussian.scale, unit_gaussian.sigma_data = "toy", 1.0

    class Plugin:
        @zoo.hookimpl
        def register_datasets(self, register):
            register("unit", unit_gaussian)
            register("plain", lambda: unit_gaussian())  # declares nothing

    zoo.plugins.register_plugin(Plugin(), "unit-data")
    yield "unit"
    zoo.plugins.unregister_plugin("unit-data")


@pytest.mark.parametrize("method,settings", [("edm", {}), ("cm", {"mode": "ct"}),
                                             ("cm", {}), ("pd", {})])
def test_presets_take_sigma_data_from_the_dataset(unit_dataset, method, settings):
    m = zoo.plugins.get("methods", method)
    assert dataset_sigma_data("unit") == 1.0
    assert m.configure("unit", **settings).sigma_data == 1.0
    assert m.configure("unit", sigma_data=0.8, **settings).sigma_data == 0.8  # --sigma-data
    assert m.configure("plain", **settings).sigma_data == 0.5  # undeclared: EDM's 0.5
    assert m.configure("toy", **settings).sigma_data == 0.5


def test_sigma_data_reaches_the_cli_and_the_denoiser(unit_dataset, tmp_path):
    result = CliRunner().invoke(main, ["train", "edm", "--dataset", "unit", "--dry-run",
                                       "--run-dir", str(tmp_path / "edm")])
    assert result.exit_code == 0, result.output
    assert re.search(r"sigma_data\W+1\.0", result.output), result.output
    edm = zoo.plugins.get("methods", "edm")
    config = edm.configure("unit")
    assert edm.build_denoiser(config, (2,)).sigma_data == 1.0


def test_a_bad_declared_sigma_data_is_a_clear_error(unit_dataset):
    unit_gaussian.sigma_data = -1
    with pytest.raises(ValueError, match="dataset 'unit' declares sigma_data=-1; it must be a "
                                         "positive finite number"):
        zoo.plugins.get("methods", "edm").configure("unit")
