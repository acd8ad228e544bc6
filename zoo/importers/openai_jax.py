"""The paper's own CIFAR-10 checkpoints (openai/consistency_models_cifar10, JAX/Flax) as ``edm`` and
``cm`` runs of the core's NCSN++ :class:`~zoo.nets.songunet.SongUNet`, read without JAX.

A Flax checkpoint (``flax.serialization.to_bytes`` of the training ``State``) is a msgpack map
whose arrays are msgpack extension objects holding (shape, dtype name, raw bytes). It is read
with ``msgpack`` and an extension hook that only builds numeric arrays: nothing in the file is
executed. The network is score_sde's ``NCSNpp`` (jcm/models/ncsnpp.py) in the configuration of
every released file (configs/cifar10_ve_cd.py: BigGAN blocks with FIR [1, 3, 3, 1], a residual
input pyramid, no output pyramid, Fourier embedding); :func:`ncsnpp_state_dict` walks its
construction order to name each Flax module and maps it onto EDM's port, whose parameter layout
the core's SongUNet keeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import torch

from zoo.files import file_kind, sha256_file
from zoo.importers.openai import two_step_sigmas
from zoo.importers.runs import ImportFileError, dataset_record, write_imported_run
from zoo.nets import NCSNPP_CIFAR10

JAX_DOWNLOADS = "https://openaipublic.blob.core.windows.net/consistency/jcm_checkpoints/"
#: Flax's msgpack extension codes (flax/serialization.py ``_MsgpackExtType``).
EXT_NDARRAY, EXT_COMPLEX, EXT_SCALAR = 1, 2, 3
#: dtypes an array may have; anything else is refused by name.
ARRAY_DTYPES = {"float32", "float64", "float16", "int32", "int64", "uint32", "uint8", "int8",
                "bool"}
CHUNKED = "__msgpack_chunked_array__"


def _unpack_array(data: bytes) -> np.ndarray:
    shape, dtype, buffer = msgpack.unpackb(data, raw=False)
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize if dtype in ARRAY_DTYPES \
        else None
    if itemsize is not None and len(buffer) != itemsize * int(np.prod(shape)):
        raise ImportFileError(f"an array of shape {tuple(shape)} ({dtype}) with {len(buffer)} "
                              f"bytes instead of {itemsize * int(np.prod(shape))} (damaged)")
    if dtype == "bfloat16":
        array = torch.frombuffer(bytearray(buffer), dtype=torch.bfloat16).float().numpy()
    elif dtype in ARRAY_DTYPES:
        array = np.frombuffer(buffer, dtype=np.dtype(dtype)).copy()
    else:
        raise ImportFileError(f"an array of dtype {dtype!r} (readable: "
                              f"{', '.join(sorted(ARRAY_DTYPES | {'bfloat16'}))})")
    return array.reshape(shape)


def _ext_hook(code: int, data: bytes):
    if code in (EXT_NDARRAY, EXT_SCALAR):
        array = _unpack_array(data)
        return array if code == EXT_NDARRAY else array[()]
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=False)
        return complex(real, imag)
    raise ImportFileError(f"an unknown msgpack extension type {code} (Flax writes 1-3)")


def _unchunk(tree):
    """Arrays Flax split into chunks (over 2³⁰ bytes) joined again."""
    if isinstance(tree, dict):
        if tree.get(CHUNKED):  # flax/serialization.py _chunk: tuples as {"0": ..., "1": ...}
            shape, chunks = (tuple(d[str(i)] for i in range(len(d)))
                             for d in (tree["shape"], tree["chunks"]))
            return np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_flax_checkpoint(path) -> dict:
    """The state dict of a Flax msgpack checkpoint (``flax.serialization.msgpack_restore``'s
    result: nested dicts of numpy arrays) without JAX; anything else raises
    :class:`ImportFileError` saying what the file is."""
    expected = "a Flax checkpoint of openai/consistency_models_cifar10 (msgpack)"
    todo = f"download it again from {JAX_DOWNLOADS} (docs/reproduce.md)"
    kind = file_kind(path)
    if kind in ("zip", "pickle", "empty", "text"):
        what = {"zip": "a zip archive (torch.save's format, or numpy's .npz): openai's "
                       "ImageNet-64/LSUN .pt checkpoints import with `zoo import-openai`",
                "pickle": "a Python pickle: EDM's network pickles import with `zoo import-edm`",
                "empty": "empty", "text": "a text file"}[kind]
        raise ImportFileError(f"{path} is {what}, not {expected}; {todo}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        state = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except ImportFileError as exc:
        raise ImportFileError(f"{path} holds {exc}: it is not {expected}") from None
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise ImportFileError(f"{path} is not {expected} ({type(exc).__name__}: {exc}); "
                              f"{todo}") from None
    if not isinstance(state, dict):
        raise ImportFileError(f"{path} holds a msgpack {type(state).__name__}, not {expected}")
    return _unchunk(state)


def _conv(kernel) -> torch.Tensor:
    """A Flax conv kernel (H, W, in, out) as torch's (out, in, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))


def _dense(kernel) -> torch.Tensor:
    """A Flax dense kernel (in, out) as torch's (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel)))


def _vector(value) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value))


def _norm(tree, prefix):
    return {f"{prefix}.weight": _vector(tree["scale"]), f"{prefix}.bias": _vector(tree["bias"])}


def _linear(tree, prefix, kernel=_dense):
    return {f"{prefix}.weight": kernel(tree["kernel"]), f"{prefix}.bias": _vector(tree["bias"])}


def _resnet_block(tree, prefix):
    """``ResnetBlockBigGANpp`` (layerspp.py) → UNetBlock: GroupNorm_0/1 → norm0/1, Conv_0/1 →
    conv0/1, Dense_0 → affine, Conv_2 (the 1×1 skip, where present) → skip."""
    out = {**_norm(tree["GroupNorm_0"], f"{prefix}.norm0"),
           **_linear(tree["Conv_0"], f"{prefix}.conv0", _conv),
           **_linear(tree["Dense_0"], f"{prefix}.affine"),
           **_norm(tree["GroupNorm_1"], f"{prefix}.norm1"),
           **_linear(tree["Conv_1"], f"{prefix}.conv1", _conv)}
    if "Conv_2" in tree:
        out.update(_linear(tree["Conv_2"], f"{prefix}.skip", _conv))
    return out


def _attention(tree, prefix):
    """``AttnBlockpp``: GroupNorm → norm2; NIN_0/1/2 (q, k, v; W is (in, out)) → one 1×1 qkv
    conv whose output channel 3c + j is q/k/v (j) of channel c (the reshape to (B, C, 3, HW));
    NIN_3 → proj."""
    q, k, v = (tree[f"NIN_{j}"] for j in range(3))
    weight = torch.stack([_dense(n["W"]) for n in (q, k, v)], dim=1)  # (C_out, 3, C_in)
    bias = torch.stack([_vector(n["b"]) for n in (q, k, v)], dim=1)
    return {**_norm(tree["GroupNorm_0"], f"{prefix}.norm2"),
            f"{prefix}.qkv.weight": weight.reshape(-1, weight.shape[-1])[:, :, None, None],
            f"{prefix}.qkv.bias": bias.reshape(-1),
            f"{prefix}.proj.weight": _dense(tree["NIN_3"]["W"])[:, :, None, None],
            f"{prefix}.proj.bias": _vector(tree["NIN_3"]["b"])}


def ncsnpp_modules(img_resolution: int, channel_mult, num_blocks: int, attn_resolutions):
    """(Flax module name, kind, SongUNet module) in the order ``NCSNpp.__call__`` creates its
    modules (Flax numbers each class in creation order): the mapping network, the encoder (per
    level: blocks with attention at ``attn_resolutions``, then a down block and a pyramid
    ``Downsample``), the middle (block, attention, block), the decoder (per level from the
    lowest: num_blocks + 1 blocks, attention, an up block), the output norm and conv."""
    counts, modules = Counter(), []

    def add(kind, target):
        modules.append((f"{kind}_{counts[kind]}", kind, target))
        counts[kind] += 1

    add("GaussianFourierProjection", "map_noise")
    add("Dense", "map_layer0")
    add("Dense", "map_layer1")
    add("Conv", f"enc.{img_resolution}x{img_resolution}_conv")
    last = len(channel_mult) - 1
    for level in range(len(channel_mult)):
        res = img_resolution >> level
        for idx in range(num_blocks):
            add("ResnetBlockBigGANpp", f"enc.{res}x{res}_block{idx}")
            if res in attn_resolutions:
                add("AttnBlockpp", f"enc.{res}x{res}_block{idx}")
        if level != last:
            add("ResnetBlockBigGANpp", f"enc.{res // 2}x{res // 2}_down")
            add("Downsample", f"enc.{res // 2}x{res // 2}_aux_residual")
    res = img_resolution >> last
    add("ResnetBlockBigGANpp", f"dec.{res}x{res}_in0")
    add("AttnBlockpp", f"dec.{res}x{res}_in0")
    add("ResnetBlockBigGANpp", f"dec.{res}x{res}_in1")
    for level in reversed(range(len(channel_mult))):
        res = img_resolution >> level
        for idx in range(num_blocks + 1):
            add("ResnetBlockBigGANpp", f"dec.{res}x{res}_block{idx}")
        if res in attn_resolutions:
            add("AttnBlockpp", f"dec.{res}x{res}_block{num_blocks}")
        if level:
            add("ResnetBlockBigGANpp", f"dec.{res * 2}x{res * 2}_up")  # the next level's
    add("GroupNorm", f"dec.{img_resolution}x{img_resolution}_aux_norm")
    add("Conv", f"dec.{img_resolution}x{img_resolution}_aux_conv")
    return modules


#: The released files' network settings: configs/cifar10_ve_cd.py:44-69 (the same in every
#: configs/cifar10_*.py of the released models), which are EDM's NCSN++ (``ncsnpp``).
RELEASED_NETWORK = dict(img_resolution=32, channel_mult=(2, 2, 2), num_blocks=4,
                        attn_resolutions=(16,))


def _check_ncsnpp(network_kwargs: dict) -> dict:
    """The ``ncsnpp`` settings the mapping holds for: score_sde's NCSN++ as the released configs
    set it; another value names itself."""
    settings = {**NCSNPP_CIFAR10, **network_kwargs}
    fixed = dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                 decoder_type="standard", resample_filter=(1, 3, 3, 1), channel_mult_emb=4,
                 label_dim=0, augment_dim=0)
    wrong = [f"{key}={settings[key]!r} (the released files have {value!r})"
             for key, value in fixed.items()
             if key in settings and np.atleast_1d(settings[key]).tolist() != np.atleast_1d(
                 value).tolist()]
    if wrong:
        raise ValueError("the Flax NCSN++ maps onto ncsnpp with score_sde's released layout "
                         "only: " + "; ".join(wrong))
    return settings


def ncsnpp_state_dict(params: dict, network_kwargs: dict, img_resolution: int) -> dict:
    """The Flax ``params`` tree of score_sde's ``NCSNpp`` as the state dict of ``ncsnpp``
    (SongUNet) with ``network_kwargs``: kernels transposed to torch's layout, q/k/v fused into
    qkv, the Fourier frequencies W as ``map_noise.freqs`` (both embed [sin, cos] of 2π·W·c),
    the FIR filter [1, 3, 3, 1] of every resampling layer as its ``resample_filter``.
    Every Flax module that the configuration does not create, or that is absent, is an error."""
    settings = _check_ncsnpp(network_kwargs)
    modules = ncsnpp_modules(img_resolution, settings["channel_mult"], settings["num_blocks"],
                             settings["attn_resolutions"])
    missing = [name for name, _, _ in modules if name not in params]
    unexpected = sorted(set(params) - {name for name, _, _ in modules})
    if missing or unexpected:
        raise ValueError("the Flax parameters are not NCSN++ with "
                         f"channel_mult={list(settings['channel_mult'])}, num_blocks="
                         f"{settings['num_blocks']}, attn_resolutions="
                         f"{list(settings['attn_resolutions'])} at {img_resolution} px (another "
                         "network written by the same code: pass its settings as network_kwargs,"
                         " --network-kwargs on the command line): "
                         + "; ".join(([f"missing {', '.join(missing[:10])}"] if missing else [])
                                     + ([f"unexpected {', '.join(unexpected[:10])}"]
                                        if unexpected else [])))
    fir = torch.tensor([1.0, 3.0, 3.0, 1.0])  # layerspp fir_kernel; _setup_kernel: outer / sum²
    fir = (torch.outer(fir, fir) / fir.sum() ** 2)[None, None]
    state = {}
    for name, kind, target in modules:
        if target.endswith(("_down", "_up")):  # the FIR filters of the resampling convs
            state.update({f"{target}.conv0.resample_filter": fir,
                          f"{target}.skip.resample_filter": fir})
        tree = params[name]
        if kind == "GaussianFourierProjection":
            state[f"{target}.freqs"] = _vector(tree["W"])
        elif kind == "Dense":
            state.update(_linear(tree, target))
        elif kind == "Conv":
            state.update(_linear(tree, target, _conv))
        elif kind == "GroupNorm":
            state.update(_norm(tree, target))
        elif kind == "ResnetBlockBigGANpp":
            state.update(_resnet_block(tree, target))
        elif kind == "AttnBlockpp":
            state.update(_attention(tree, target))
        else:  # Downsample: up_or_down_sampling.Conv2d, kernel "weight" (H, W, in, out)
            conv = tree["Conv2d_0"]
            state[f"{target}.weight"] = _conv(conv["weight"])
            state[f"{target}.bias"] = _vector(conv["bias"])
            state[f"{target}.resample_filter"] = fir
    return {key: value.float() for key, value in state.items()}


@dataclass(frozen=True)
class JaxPreset:
    """One released file: its path under :data:`JAX_DOWNLOADS`, method, the ``ncsnpp``
    settings that differ from EDM's CIFAR-10 NCSN++ and the method's fields."""

    file: str
    method: str
    network_kwargs: dict
    method_fields: dict = field(default_factory=dict)


#: The two-step σ of the repository's multistep example (editing_multistep_sampling.ipynb:
#: ``ts = [0, 11, 17]`` on the N = 18 Karras grid): σ = 80, then σ(11).
TWO_STEP = two_step_sigmas(11, 18)


def _cm(file, mode, distance, dropout=0.0, **fields):
    return JaxPreset(file, "cm", {"dropout": dropout},
                     dict(mode=mode, distance=distance, init="random", teacher="",
                          sample_sigmas=TWO_STEP, **fields))


#: README.md of openai/consistency_models_cifar10 lists the files; the settings are those of
#: launch.sh's command for each (its --config.* overrides on configs/cifar10_ve_cd.py,
#: cifar10_ve_ct_adaptive.py, cifar10_ve_continuous.py) and the configs' dropout (:69 / :68 /
#: :61 model.dropout; cifar10_k_ve.py for the EDM teacher).
JAX_PRESETS = {
    "edm-cifar10": JaxPreset("edm_cifar10_ema", "edm", {"dropout": 0.13}),
    "cd-l1": _cm("cd-l1/checkpoints/checkpoint_80", "cd", "l1", lr=2e-4),
    "cd-l2": _cm("cd-l2/checkpoints/checkpoint_80", "cd", "l2", lr=4e-4),
    "cd-lpips": _cm("cd-lpips/checkpoints/checkpoint_80", "cd", "lpips", lr=4e-4),
    "ct-lpips": _cm("ct-lpips/checkpoints/checkpoint_74", "ct", "lpips", lr=4e-4, s0=2, s1=150,
                    mu0=0.9),
    "cd-cont-l2": _cm("cifar10-continuous-cd-l2/checkpoints/checkpoint_40", "cd-cont", "l2",
                      dropout=0.3, lr=1e-3, continuous_loss="norm"),
    "cd-cont-l2-stopgrad": _cm("cifar10-continuous-cd-l2-stopgrad/checkpoints/checkpoint_40",
                               "cd-cont", "l2", dropout=0.3, lr=5e-6,
                               continuous_loss="stopgrad"),
    "cd-cont-lpips-stopgrad": _cm(
        "cifar10-continuous-cd-lpips-stopgrad/checkpoints/checkpoint_40", "cd-cont", "lpips",
        dropout=0.3, lr=5e-6, continuous_loss="stopgrad"),
    "ct-cont-l2": _cm("continuous-ct-l2/checkpoints/checkpoint_80", "ct-cont", "l2",
                      dropout=0.3, lr=5e-6, continuous_loss="stopgrad"),
    "ct-cont-lpips": _cm("continuous-ct-lpips/checkpoints/checkpoint_40", "ct-cont", "lpips",
                         dropout=0.3, lr=5e-6, continuous_loss="stopgrad"),
}

#: The parameter trees a training State holds; ``params_ema`` is what the repository samples
#: and evaluates (jcm/sampling.py, jcm/evaluate.py).
WEIGHTS = {"ema": "params_ema", "online": "params"}


def import_jax_run(checkpoint, run_dir, preset: str | JaxPreset, weights: str = "ema",
                   dataset: str = "cifar10", check_data: bool | None = None,
                   network_kwargs: dict | None = None) -> Path:
    """Write a Flax checkpoint of openai/consistency_models_cifar10 (``preset``: a name of
    :data:`JAX_PRESETS`) as an ``edm`` or ``cm`` run of the ``ncsnpp`` network. The teacher gets
    EDM's preconditioning, the CD/CT models the consistency parameterisation with t_min =
    0.002 (jcm/models/utils.py ``get_denoiser_fn``, ``get_distiller_fn``: c_in = 1/√(t² + σ_d²),
    c_noise = ¼·ln t, σ_d = 0.5), which are zoo's. ``network_kwargs`` override the released
    network's (a smaller NCSN++ written by the same code)."""
    if isinstance(preset, str):
        if preset not in JAX_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(JAX_PRESETS)}")
        preset = JAX_PRESETS[preset]
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
    state = read_flax_checkpoint(checkpoint)
    tree = state.get(WEIGHTS[weights])
    if not isinstance(tree, dict):
        raise ImportFileError(f"{checkpoint} has no {WEIGHTS[weights]!r} parameter tree (keys: "
                              f"{', '.join(map(str, state))}): not a training State of "
                              "openai/consistency_models_cifar10")
    kwargs = {**RELEASED_NETWORK, **preset.network_kwargs, **(network_kwargs or {})}
    resolution = kwargs.pop("img_resolution")
    state_dict = ncsnpp_state_dict(tree, kwargs, resolution)
    shape = (3, resolution, resolution)
    data = dataset_record(dataset, shape, check_data)
    fields = dict(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, **preset.method_fields)
    step = state.get("step")
    imported = {"file": f"{checkpoint} (preset for {preset.file})",
                "sha256": sha256_file(checkpoint), "format": "flax-msgpack",
                "source": JAX_DOWNLOADS + preset.file, "weights": WEIGHTS[weights],
                "step": int(step) if step is not None and np.ndim(step) == 0 else None}
    return write_imported_run(run_dir, preset.method, fields, "ncsnpp", kwargs, state_dict,
                              data, imported)

