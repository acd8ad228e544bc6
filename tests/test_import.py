"""Importing EDM's network pickles safely: the structure of EDM's released files (persistent
objects whose source is embedded) is read without executing anything; anything else is refused."""

import builtins
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
from zoo.checkpoint_import import (
    UnsafePickleError,
    import_edm_run,
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
