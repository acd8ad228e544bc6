"""Importing EDM's network pickles safely: the structure of EDM's released files (persistent
objects whose source is embedded) is read without executing anything; anything else is refused."""

import builtins
import dataclasses
import os
import pickle
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

import zoo.plugins
from zoo.importers import (
    OPENAI_PRESETS,
    UnsafePickleError,
    import_edm_run,
    import_openai_run,
    read_edm_pickle,
    restricted_load,
)
from zoo.nets import SongUNet
from zoo.training import load_checkpoint

MODEL_KWARGS = dict(img_resolution=8, in_channels=1, out_channels=1, label_dim=0, augment_dim=9,
                    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                    dropout=0.13, embedding_type="positional", channel_mult_noise=1,
                    encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
#: Source the fake persistence hook would exec; if anything ran it, the flag would be set.
EVIL_SRC = "import builtins\nbuiltins.ZOO_PWNED = True\nclass SongUNet: pass\n"


@contextmanager
def edm_modules():
    """EDM's ``torch_utils.persistence`` and ``dnnlib.util``, registered only while dumping."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what EDM's does: exec(meta["module_src"])
        raise AssertionError("the real hook must never be called")

    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    names = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(names)
    try:
        yield persistence, util
    finally:
        for name in names:
            del sys.modules[name]


class Persistent:
    """Pickles like an EDM ``@persistent_class`` instance: _reconstruct_persistent_obj(meta)."""

    def __init__(self, hook, class_name, state):
        self.hook, self.meta = hook, dict(type="class", version=6, module_src=EVIL_SRC,
                                          class_name=class_name, state=state)

    def __reduce__(self):
        return self.hook, (self.meta,)


def persist(module: nn.Module, hook, init_kwargs=None):
    """A module tree in EDM's pickled form: persistent objects, torch ModuleDicts between."""
    children = {k: persist(v, hook) for k, v in module._modules.items()}
    if isinstance(module, nn.ModuleDict):
        container = nn.ModuleDict()
        container._modules = children  # plain torch container, pickled natively as EDM's are
        return container
    state = {**module.__dict__, "_modules": children, "_init_args": (),
             "_init_kwargs": init_kwargs or {}, "skip_scale": np.sqrt(0.5)}
    return Persistent(hook, type(module).__name__, state)


def edm_pickle(path, net: SongUNet, **extra):
    with edm_modules() as (persistence, util):
        hook = persistence._reconstruct_persistent_obj
        precond_kwargs = dict(img_resolution=8, img_channels=1, label_dim=0, use_fp16=False,
                              sigma_data=0.5, model_type="SongUNet",
                              **{k: v for k, v in MODEL_KWARGS.items()
                                 if k not in ("img_resolution", "in_channels", "out_channels",
                                              "label_dim")})
        precond = Persistent(hook, "EDMPrecond", {
            "training": False, "_parameters": {}, "_buffers": {},
            "_modules": {"model": persist(net, hook, MODEL_KWARGS)},
            "_init_args": (), "_init_kwargs": precond_kwargs, "sigma_data": 0.5})
        data = {"ema": precond, "augment_pipe": None, "dataset_kwargs": util.EasyDict(
            class_name="training.dataset.ImageFolderDataset", path="cifar10.zip", xflip=False)}
        data.update(extra)
        path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def tiny_songunet():
    torch.manual_seed(0)
    return SongUNet(**MODEL_KWARGS).eval()


@pytest.fixture(autouse=True)
def _no_flag():
    yield
    assert not hasattr(builtins, "ZOO_PWNED"), "code from a pickle was executed"


def test_edm_pickle_imports_into_songunet_with_equal_weights_and_outputs(tmp_path):
    source = tiny_songunet()
    network = read_edm_pickle(edm_pickle(tmp_path / "net.pkl", source))
    assert network.model_kwargs == MODEL_KWARGS
    assert network.precond_kwargs["model_type"] == "SongUNet"
    imported = network.build().eval()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(imported.state_dict()[name], tensor, rtol=0, atol=0)
    x, noise = torch.randn(4, 1, 8, 8), torch.randn(4)
    torch.testing.assert_close(imported(x, noise), source(x, noise), rtol=0, atol=0)


def test_import_writes_an_edm_run_usable_for_sampling(tmp_path):
    source = tiny_songunet()
    run = import_edm_run(edm_pickle(tmp_path / "net.pkl", source), tmp_path / "run", "digits")
    state = load_checkpoint(run)
    assert state["method"] == "edm" and state["imported_from"]["format"] == "edm-pickle"
    loaded = zoo.plugins.get("methods", "edm").load(run)
    assert loaded.config.network == "songunet"
    torch.testing.assert_close(loaded.denoiser.net.state_dict()["map_layer0.weight"],
                               source.state_dict()["map_layer0.weight"], rtol=0, atol=0)
    samples = zoo.plugins.get("methods", "edm").sample(loaded, 2, steps=2)
    assert samples.x.shape == (2, 1, 8, 8) and torch.isfinite(samples.x).all()


class Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func, arg", [
    (os.system, "touch {flag}"),
    (builtins.exec, "open({flag!r}, 'w').close()"),
    (builtins.eval, "open({flag!r}, 'w').close()"),
])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, func, arg):
    flag = tmp_path / "flag"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Evil(func, arg.format(flag=str(flag)))}))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        restricted_load(path)
    assert not flag.exists()


def test_embedded_source_is_never_executed_and_other_classes_are_refused(tmp_path):
    # The network records carry EVIL_SRC as module_src: reading them must not set the flag
    # (checked by the autouse fixture). A plain torch module (not a container) is refused.
    edm_pickle(tmp_path / "ok.pkl", tiny_songunet())
    read_edm_pickle(tmp_path / "ok.pkl")
    (tmp_path / "linear.pkl").write_bytes(pickle.dumps({"ema": nn.Linear(2, 2)}))
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.linear.Linear"):
        read_edm_pickle(tmp_path / "linear.pkl")


# ------------------------------------------------ DhariwalUNet pickles, openai checkpoints, errors

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _fixture_parameters(shapes):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_adm_fixture", os.path.join(FIXTURES, "make_adm_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fixture_parameters(shapes)


class DhariwalUNet(nn.Module):
    """Stands in for EDM's class in the pickle: only its name and state are recorded."""


def module_tree(state: dict) -> nn.Module:
    """A module tree holding ``state`` under its names (``enc``/``dec`` as ModuleDicts)."""
    root = DhariwalUNet()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for name in path:
            if name not in module._modules:
                child = nn.ModuleDict() if module is root and name in ("enc", "dec") else (
                    nn.Module())
                module._modules[name] = child
            module = module._modules[name]
        if leaf == "resample_filter":
            module.register_buffer(leaf, value)
        else:
            module.register_parameter(leaf, nn.Parameter(value))
    return root


def dhariwal_pickle(path, ref) -> None:
    """EDM's ImageNet pickle layout (EDMPrecond wrapping a DhariwalUNet) for the fixture net."""
    state = {**_fixture_parameters(ref["shapes"]), **ref["buffers"]}
    with edm_modules() as (persistence, util):
        hook = persistence._reconstruct_persistent_obj
        model_kwargs = dict(ref["kwargs"])
        precond_kwargs = dict(img_resolution=8, img_channels=3, label_dim=10, use_fp16=False,
                              sigma_data=0.5, model_type="DhariwalUNet",
                              **{k: v for k, v in model_kwargs.items() if k not in (
                                  "img_resolution", "in_channels", "out_channels", "label_dim")})
        precond = Persistent(hook, "EDMPrecond", {
            "training": False, "_parameters": {}, "_buffers": {},
            "_modules": {"model": persist(module_tree(state), hook, model_kwargs)},
            "_init_args": (), "_init_kwargs": precond_kwargs, "sigma_data": 0.5})
        path.write_bytes(pickle.dumps({"ema": precond, "augment_pipe": None}, protocol=4))


def test_dhariwal_pickle_imports_as_an_adm_run_with_edm_outputs(tmp_path):
    ref = torch.load(os.path.join(FIXTURES, "adm_reference.pt"), weights_only=True)["edm"]
    dhariwal_pickle(tmp_path / "net.pkl", ref)
    run = import_edm_run(tmp_path / "net.pkl", tmp_path / "run", "imagenet64", check_data=False)
    loaded = zoo.plugins.get("methods", "edm").load(run)
    assert loaded.config.network == "adm" and loaded.dataset["checksum"] is None
    with torch.no_grad():
        out = loaded.denoiser.net(ref["x"], ref["noise_labels"], ref["class_labels"])
    torch.testing.assert_close(out, ref["out"], rtol=1e-5, atol=1e-5)


def tiny_openai_checkpoint(path):
    ref = torch.load(os.path.join(FIXTURES, "adm_reference.pt"), weights_only=True)["openai"]
    state = _fixture_parameters(ref["shapes"])
    k = ref["kwargs"]
    kwargs = dict(model_channels=k["model_channels"], channel_mult=k["channel_mult"],
                  num_res_blocks=k["num_res_blocks"], attn_resolutions=[8, 4],
                  num_head_channels=k["num_head_channels"], resblock_updown=True)
    preset = dataclasses.replace(OPENAI_PRESETS["edm-imagenet64"], shape=(3, 8, 8),
                                 network_kwargs=kwargs, num_classes=10)
    torch.save(state, path)
    return state, preset


def test_openai_key_errors_are_listed_in_one_error(tmp_path):
    state, preset = tiny_openai_checkpoint(tmp_path / "ok.pt")
    state = dict(state)
    del state["out.2.bias"]
    state["time_embed.9.weight"] = state.pop("time_embed.2.weight")
    state["label_emb.weight"] = torch.zeros(7, 128)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as info:
        import_openai_run(tmp_path / "bad.pt", tmp_path / "run", preset, check_data=False)
    message = str(info.value)
    assert "missing (2): out.2.bias, time_embed.2.weight" in message
    assert "unexpected (1): time_embed.9.weight" in message
    assert "mismatched (1): label_emb.weight (7, 128) (expected (10, 128))" in message
    assert not (tmp_path / "run").exists()
    run = import_openai_run(tmp_path / "ok.pt", tmp_path / "run", preset, check_data=False)
    assert zoo.plugins.get("methods", "edm").load(run).denoiser.parameterization == "edm"


def test_openai_preset_and_method_must_agree(tmp_path):
    _, preset = tiny_openai_checkpoint(tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="is a 'edm' checkpoint, not 'cm'"):
        import_openai_run(tmp_path / "ok.pt", tmp_path / "run", preset, method="cm")
    with pytest.raises(ValueError, match="unknown preset 'cd-cifar10'; valid: edm-imagenet64"):
        import_openai_run(tmp_path / "ok.pt", tmp_path / "run", "cd-cifar10")


class SystemCall:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def bad_files(tmp_path) -> dict:
    """A text file, an empty one, a truncated checkpoint and malicious .pt and .pkl files."""
    flag = tmp_path / "flag"
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pt")
    whole = (tmp_path / "whole.pt").read_bytes()
    files = {"text": b"<html>404 Not Found</html>\n", "empty": b"",
             "truncated": whole[: len(whole) // 2],
             "truncated-pickle": pickle.dumps({"w": list(range(1000))})[:100],
             "malicious-pickle": pickle.dumps({"ema": SystemCall(flag)})}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"w": SystemCall(flag)}, tmp_path / "malicious-pt")
    return {name: tmp_path / name for name in [*files, "malicious-pt"]}


@pytest.mark.parametrize("command", ["import-edm", "import-openai"])
def test_import_commands_say_what_a_bad_file_is_in_one_line(tmp_path, command):
    from click.testing import CliRunner

    from zoo.cli import main

    zip_file = "is a torch.save zip checkpoint" if command == "import-edm" else None
    expected = {"text": "is a text file", "empty": "is empty (0 bytes)",
                "truncated": zip_file or "is truncated or corrupt",
                "truncated-pickle": "is truncated or corrupt" if zip_file else "is a Python pickle",
                "malicious-pickle": "refus" if zip_file else "is a Python pickle",
                "malicious-pt": zip_file or "refus"}
    extra = ["--preset", "cd-imagenet64-l2"] if command == "import-openai" else []
    for name, path in bad_files(tmp_path).items():
        result = CliRunner().invoke(main, [command, str(path), "--out", str(tmp_path / "run"),
                                           *extra])
        output = result.output.strip()
        assert result.exit_code == 1, (name, output)
        assert len(output.splitlines()) == 1 and output.startswith("Error: "), (name, output)
        assert expected[name] in output, (name, output)
        assert "weights_only" not in output and "Traceback" not in output, (name, output)
        assert "safe_globals" not in output, (name, output)
        assert "Aborted" not in output, (name, output)
    assert not (tmp_path / "flag").exists()


def test_load_checkpoint_does_not_pass_on_torchs_weights_only_advice(tmp_path):
    from zoo.training import CheckpointError

    files = bad_files(tmp_path)
    for name in ("malicious-pt", "text", "empty", "truncated"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(files[name])
        message = str(info.value)
        assert "weights_only" not in message and "safe_globals" not in message
        assert len(message.splitlines()) == 1 and str(files[name]) in message
    assert not (tmp_path / "flag").exists()


def test_import_edm_on_a_state_dict_says_which_importer_or_file_it_needs(tmp_path):
    """A bare EDM state dict cannot be rebuilt (its pickle records the constructor arguments):
    import-edm says so, instead of sending the user to import-openai, which would fail too; an
    openai state dict is sent to import-openai."""
    from click.testing import CliRunner

    from zoo.cli import main

    net = SongUNet(**MODEL_KWARGS)
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "edm.pt")
    torch.save({"input_blocks.0.0.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "openai.pt")
    result = CliRunner().invoke(main, ["import-edm", str(tmp_path / "edm.pt"), "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1 and "a bare state dict of an EDM network" in result.output
    assert "network-snapshot-*.pkl" in result.output and "import-openai" not in result.output
    result = CliRunner().invoke(main, ["import-edm", str(tmp_path / "openai.pt"), "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 1 and "an openai state dict" in result.output
    assert "zoo import-openai --preset" in result.output
