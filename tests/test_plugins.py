"""Plugin discovery through real entry points, isolation of broken plugins, name clashes."""

import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import zoo.plugins
from zoo import API_VERSION
from zoo.cli import main
from zoo.hookspecs import hookimpl


def make_distribution(site, dist, module, source, entry_name=None):
    """A throwaway installed distribution: a module and a dist-info with a `zoo` entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[zoo]\n{entry_name or module} = {module}\n")


GOOD = """
from zoo.hookspecs import hookimpl

def double(denoiser, x, sigmas, *, generator=None, **opts):
    return 2 * x

@hookimpl
def register_samplers(register):
    register("double", double)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_found_through_entry_point(site):
    make_distribution(site, "zoo-double", "zoo_double_plugin", GOOD)
    zoo.plugins.reset()
    assert "double" in zoo.plugins.registry("samplers").names()
    info = {p.name: p for p in zoo.plugins.plugins()}["zoo_double_plugin"]
    assert (info.distribution, info.version) == ("zoo-double", "0.3")
    assert info.hooks == ["register_samplers"]
    assert "zoo-double" in zoo.plugins.registry("samplers").source("double")


def test_first_party_methods_come_through_entry_points():
    from importlib import metadata

    names = {ep.name for ep in metadata.entry_points(group="zoo")}
    assert {"edm", "cm", "pd"} <= names
    assert "edm" in zoo.plugins.registry("methods").names()


def test_broken_plugin_is_reported_and_others_load(site):
    make_distribution(site, "zoo-broken", "zoo_broken_plugin", "raise ImportError('no numpy 9')")
    make_distribution(site, "zoo-double", "zoo_double_plugin", GOOD)
    zoo.plugins.reset()
    assert "double" in zoo.plugins.registry("samplers")
    assert "edm" in zoo.plugins.registry("methods")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "zoo_broken_plugin"]
    assert failure.distribution == "zoo-broken" and "no numpy 9" in failure.error


def test_broken_plugin_does_not_take_the_cli_down(site):
    make_distribution(site, "zoo-broken", "zoo_broken_plugin", "raise RuntimeError('boom')")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "edm" in out.stdout
    assert "zoo_broken_plugin" in out.stderr and "boom" in out.stderr


def test_duplicate_name_is_an_error_naming_both_sources(site):
    clash = GOOD.replace('"double"', '"heun"')
    make_distribution(site, "zoo-clash", "zoo_clash_plugin", clash)
    zoo.plugins.reset()
    assert zoo.plugins.get("samplers", "heun").__module__ == "zoo.diffusion.samplers"
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "zoo_clash_plugin"]
    assert "'heun' is registered twice" in failure.error
    assert "zoo.diffusion.samplers" in failure.error and "zoo-clash" in failure.error
    reg = zoo.plugins.Registry("samplers")
    reg.add("x", 1, "first")
    with pytest.raises(zoo.plugins.DuplicateNameError, match="by first and by second"):
        reg.add("x", 2, "second")


def test_plugins_can_be_blocked_by_name(site, monkeypatch):
    make_distribution(site, "zoo-double", "zoo_double_plugin", GOOD)
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "zoo_double_plugin, pd")
    zoo.plugins.reset()
    assert "double" not in zoo.plugins.registry("samplers")
    assert "pd" not in zoo.plugins.registry("methods")
    assert "edm" in zoo.plugins.registry("methods")


def test_incompatible_api_version_is_refused(site):
    make_distribution(
        site, "zoo-future", "zoo_future_plugin", GOOD + f"\nZOO_API_VERSION = {API_VERSION + 1}\n"
    )
    zoo.plugins.reset()
    assert "double" not in zoo.plugins.registry("samplers")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "zoo_future_plugin"]
    assert f"API {API_VERSION + 1}" in failure.error


def test_in_process_plugin_and_unknown_names():
    class Plugin:
        @hookimpl
        def register_networks(self, register):
            register("tiny", lambda data_shape, label_dim=0: None)

    zoo.plugins.register_plugin(Plugin(), "in-test")
    assert "tiny" in zoo.plugins.registry("networks")
    with pytest.raises(zoo.plugins.UnknownNameError, match="unknown network 'nope'; valid: .*tiny"):
        zoo.plugins.get("networks", "nope")
    zoo.plugins.unregister_plugin("in-test")
    assert "tiny" not in zoo.plugins.registry("networks")


def test_plugins_command_lists_plugins_and_hooks():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert f"edm  ({zoo.DISTRIBUTION}" in result.output and "register_methods" in result.output
    assert ("samplers: consistency, ddim, deis-3, dpm-solver++2m, dpm-solver-2, dpm-solver-3, "
            "edm-stochastic, euler, heun, ipndm, meanflow, rf-euler, rhoab-deis-3") in result.output


def test_cli_unknown_method_lists_valid_ones():
    result = CliRunner().invoke(main, ["train", "nope"])
    assert result.exit_code != 0
    assert "unknown method 'nope'; valid:" in result.output and "edm" in result.output
