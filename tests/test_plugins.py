"""Plugin discovery through real entry points, isolation of broken plugins, name clashes."""

import os
import shutil
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


def test_a_first_party_name_cannot_be_taken_whatever_the_entry_point_order(site):
    """zoo's own names are kept, and the plugin that claims one is refused whole, whether its
    entry point sorts before or after zoo's ("a" < "edm" < "zz")."""
    for entry in ("a_clash", "zz_clash"):
        clash = GOOD.replace('"double"', '"heun"') + textwrap.dedent("""
            @hookimpl
            def register_networks(register):
                register("clash-net", lambda data_shape, label_dim=0: None)
        """)
        make_distribution(site, f"zoo-{entry}", f"zoo_{entry}_module", clash, entry_name=entry)
        zoo.plugins.reset()
        assert zoo.plugins.get("samplers", "heun").__module__ == "zoo.diffusion.samplers"
        assert "clash-net" not in zoo.plugins.registry("networks")  # nothing of it went in
        (failure,) = [f for f in zoo.plugins.failures() if f.name == entry]
        assert "sampler 'heun' is zoo's own (zoo.diffusion.samplers" in failure.error
        assert "cannot take a first-party name" in failure.error
        for path in site.iterdir():
            if entry in path.name:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    reg = zoo.plugins.Registry("samplers")
    reg.add("x", 1, "first")
    with pytest.raises(zoo.plugins.DuplicateNameError, match="by first and by second"):
        reg.add("x", 2, "second")


def test_two_plugins_claiming_one_name_are_both_refused_until_one_is_chosen(site, monkeypatch):
    make_distribution(site, "zoo-one", "zoo_one_plugin", GOOD)
    make_distribution(site, "zoo-two", "zoo_two_plugin", GOOD)
    zoo.plugins.reset()
    assert "double" not in zoo.plugins.registry("samplers")
    errors = {f.name: f.error for f in zoo.plugins.failures()}
    assert "also registered by zoo_two_plugin" in errors["zoo_one_plugin"]
    assert "also registered by zoo_one_plugin" in errors["zoo_two_plugin"]
    assert "ZOO_DISABLE_PLUGINS=zoo_two_plugin" in errors["zoo_one_plugin"]
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "zoo_two_plugin")
    zoo.plugins.reset()
    assert "zoo-one" in zoo.plugins.registry("samplers").source("double")
    assert not zoo.plugins.failures()


def test_a_plugin_registers_all_of_its_things_or_none():
    """A registration that fails part-way (its second name is a duplicate of its own) leaves
    none of the plugin's names behind, not half of them."""
    class HalfWay:
        @hookimpl
        def register_networks(self, register):
            register("first-ok", lambda data_shape, label_dim=0: None)
            register("twice", lambda data_shape, label_dim=0: None)
            register("twice", lambda data_shape, label_dim=0: None)

    zoo.plugins.register_plugin(HalfWay(), "half-way")
    assert "first-ok" not in zoo.plugins.registry("networks")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "half-way"]
    assert "registers network 'twice' twice" in failure.error


def test_a_misspelled_hook_is_reported_not_ignored():
    class Typo:
        @hookimpl
        def register_sampler(self, register):  # register_samplers is the hook
            register("never", lambda denoiser, x, sigmas, *, generator=None: x)

    zoo.plugins.register_plugin(Typo(), "typo")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "typo"]
    assert "hook 'register_sampler' is not a zoo hook" in failure.error
    assert "register_samplers" in failure.error


def test_registered_objects_are_checked_for_what_their_kind_needs():
    class Nameless(type(zoo.plugins.get("methods", "edm"))):
        """A working method whose author forgot its name."""

        name = ""

    class Bad:
        @hookimpl
        def register_methods(self, register):
            register("nameless", Nameless())

    zoo.plugins.register_plugin(Bad(), "bad-method")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "bad-method"]
    assert "method 'nameless' has name ''" in failure.error
    assert "nameless" not in zoo.plugins.registry("methods")

    class NoCompute:
        @hookimpl
        def register_metrics(self, register):
            register("half-metric", type("M", (), {"name": "m", "kinds": ("points",)})())

    zoo.plugins.register_plugin(NoCompute(), "bad-metric")
    (failure,) = [f for f in zoo.plugins.failures() if f.name == "bad-metric"]
    assert "metric 'half-metric' lacks lower_is_better, compute" in failure.error


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


def test_sampler_options_literal_choices_defaults_display_names_and_help():
    from typing import Annotated, Literal

    from zoo.diffusion.samplers import check_sampler_options, sampler_options
    from zoo.methods import sampler_label

    def chooser(denoiser, x, sigmas, *, generator=None, class_labels=None,
                mode: Annotated[Literal["a", "b"], "which branch"] = "a"):
        return x

    chooser.display_name = "Chooser"

    def no_default(denoiser, x, sigmas, *, generator=None, gain: float):
        return x

    def odd_type(denoiser, x, sigmas, *, generator=None, gain: list = None):
        return x

    class Samplers:
        @hookimpl
        def register_samplers(self, register):
            register("chooser", chooser)

    zoo.plugins.register_plugin(Samplers(), "samplers-ok")
    assert check_sampler_options("chooser", chooser, {"mode": "b"}) == {"mode": "b"}
    with pytest.raises(ValueError, match="option mode must be one of 'a', 'b', got 'c'"):
        check_sampler_options("chooser", chooser, {"mode": "c"})
    assert sampler_options(chooser)["mode"].describe() == \
        "mode (one of 'a', 'b', default 'a'): which branch"
    assert sampler_label("chooser", {"mode": "b"}) == "Chooser, mode=b"
    for fn, problem in ((no_default, "option gain has no default"),
                        (odd_type, "option gain has type list")):
        class Bad:
            @hookimpl
            def register_samplers(self, register, _fn=fn):
                register("bad", _fn)

        zoo.plugins.register_plugin(Bad(), f"bad-{fn.__name__}")
        (failure,) = [f for f in zoo.plugins.failures() if f.name == f"bad-{fn.__name__}"]
        assert problem in failure.error
