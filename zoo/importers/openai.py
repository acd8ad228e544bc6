"""The checkpoints of openai/consistency_models (Song et al. 2023) as ``cm`` and ``edm`` runs: the
settings of each released file (:data:`OPENAI_PRESETS`, from the repository's scripts) and the
state dicts read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.data.images import IMAGENET64_CLASSES
from zoo.files import file_kind, sha256_file, unreadable_file_message
from zoo.importers.runs import ImportFileError, dataset_record, write_imported_run

OPENAI_DOWNLOADS = "https://openaipublic.blob.core.windows.net/consistency/"


#: The architecture flags every openai/consistency_models command in scripts/launch.sh passes
#: for ImageNet-64 (``--class_cond True --num_channels 192 --num_res_blocks 3
#: --attention_resolutions 32,16,8 --num_head_channels 64 --resblock_updown True
#: --use_scale_shift_norm True --use_fp16 True --image_size 64``); channel_mult (1, 2, 3, 4) is
#: cm/script_util.py create_model's default for image_size 64; its 1000 classes (NUM_CLASSES)
#: are the run's ``num_classes``.
ADM_IMAGENET64 = dict(model_channels=192, channel_mult=[1, 2, 3, 4], num_res_blocks=3,
                      attn_resolutions=[32, 16, 8], num_head_channels=64,
                      use_scale_shift_norm=True, resblock_updown=True, use_fp16=True,
                      noise_label_scale=1000.0)


#: LSUN-256 flags of scripts/launch.sh (``--class_cond False --num_channels 256
#: --num_res_blocks 2 --attention_resolutions 32,16,8 --num_head_channels 64
#: --resblock_updown True --use_scale_shift_norm False --use_fp16 True --image_size 256``);
#: channel_mult (1, 1, 2, 2, 4, 4) is create_model's default for image_size 256.
ADM_LSUN256 = dict(model_channels=256, channel_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=2,
                   attn_resolutions=[32, 16, 8], num_head_channels=64,
                   use_scale_shift_norm=False, resblock_updown=True, use_fp16=True,
                   noise_label_scale=1000.0)


def karras_sigma(index: int, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 rho: float = 7.0) -> float:
    """σ at ``index`` of openai's ``--steps`` Karras grid, as cm/karras_diffusion.py's
    ``stochastic_iterative_sampler`` computes it from ``--ts``."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + index / (steps - 1) * (lo - hi)) ** rho


def two_step_sigmas(ts_middle: int, steps: int) -> str:
    """``sample_sigmas`` for openai's two-step ``--ts 0,MIDDLE,END --steps STEPS``: σ(0) = 80,
    σ(MIDDLE) (the last ts, σ_min, only re-noises by √(σ_min² − σ_min²) = 0)."""
    return f"{karras_sigma(0, steps)!r},{karras_sigma(ts_middle, steps)!r}"


@dataclass(frozen=True)
class OpenAIPreset:
    """The settings of one released file: method, data, network, classes and CM sampling."""

    file: str
    method: str
    dataset: str
    shape: tuple
    network_kwargs: dict
    method_fields: dict
    num_classes: int = 0


def _cm(file, dataset, shape, net, mode, distance, sigmas):
    fields = dict(mode=mode, distance=distance, init="random", teacher="", sample_sigmas=sigmas)
    return OpenAIPreset(file, "cm", dataset, shape, dict(net, dropout=0.0), fields,
                        IMAGENET64_CLASSES if dataset == "imagenet64" else 0)


#: ``--dropout``: 0.1 for the EDM teachers, 0.0 for the CM students (scripts/launch.sh); the
#: two-step σ are launch.sh's ``--ts``/``--steps`` of its multistep commands; CD on LSUN cat has
#: no published two-step schedule, so its default is one step (pass ``--sigmas`` for more).
OPENAI_PRESETS = {
    "edm-imagenet64": OpenAIPreset("edm_imagenet64_ema.pt", "edm", "imagenet64", (3, 64, 64),
                                   dict(ADM_IMAGENET64, dropout=0.1), {}, IMAGENET64_CLASSES),
    "cd-imagenet64-l2": _cm("cd_imagenet64_l2.pt", "imagenet64", (3, 64, 64), ADM_IMAGENET64,
                            "cd", "l2", two_step_sigmas(22, 40)),
    "cd-imagenet64-lpips": _cm("cd_imagenet64_lpips.pt", "imagenet64", (3, 64, 64),
                               ADM_IMAGENET64, "cd", "lpips", two_step_sigmas(22, 40)),
    "ct-imagenet64": _cm("ct_imagenet64.pt", "imagenet64", (3, 64, 64), ADM_IMAGENET64, "ct",
                         "lpips", two_step_sigmas(106, 201)),
    "edm-lsun-bedroom256": OpenAIPreset("edm_bedroom256_ema.pt", "edm", "lsun-bedroom256",
                                        (3, 256, 256), dict(ADM_LSUN256, dropout=0.1), {}),
    "cd-lsun-bedroom256-l2": _cm("cd_bedroom256_l2.pt", "lsun-bedroom256", (3, 256, 256),
                                 ADM_LSUN256, "cd", "l2", two_step_sigmas(18, 40)),
    "cd-lsun-bedroom256-lpips": _cm("cd_bedroom256_lpips.pt", "lsun-bedroom256", (3, 256, 256),
                                    ADM_LSUN256, "cd", "lpips", two_step_sigmas(17, 40)),
    "ct-lsun-bedroom256": _cm("ct_bedroom256.pt", "lsun-bedroom256", (3, 256, 256),
                              ADM_LSUN256, "ct", "lpips", two_step_sigmas(67, 151)),
    "edm-lsun-cat256": OpenAIPreset("edm_cat256_ema.pt", "edm", "lsun-cat256", (3, 256, 256),
                                    dict(ADM_LSUN256, dropout=0.1), {}),
    "cd-lsun-cat256-l2": _cm("cd_cat256_l2.pt", "lsun-cat256", (3, 256, 256), ADM_LSUN256,
                             "cd", "l2", repr(karras_sigma(0, 40))),
    "cd-lsun-cat256-lpips": _cm("cd_cat256_lpips.pt", "lsun-cat256", (3, 256, 256),
                                ADM_LSUN256, "cd", "lpips", repr(karras_sigma(0, 40))),
    "ct-lsun-cat256": _cm("ct_cat256.pt", "lsun-cat256", (3, 256, 256), ADM_LSUN256, "ct",
                          "lpips", two_step_sigmas(62, 151)),
}


def load_openai_state_dict(path) -> dict[str, torch.Tensor]:
    """openai's released ``.pt`` (a state dict of ``UNetModel``) read with
    ``torch.load(weights_only=True)``; anything else raises :class:`ImportFileError`."""
    expected = "an openai/consistency_models checkpoint (.pt state dict)"
    todo = f"download it again from {OPENAI_DOWNLOADS} (see docs/reproduce.md)"
    if file_kind(path) == "pickle":
        raise ImportFileError(f"{path} is a Python pickle, not {expected} (torch.save's zip "
                              "format): EDM's network pickles import with `zoo import-edm`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise ImportFileError(unreadable_file_message(path, exc, expected, todo)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ImportFileError(f"{path} holds a {type(state).__name__}, not {expected}: {todo}")
    return state


def read_preset(name: str) -> OpenAIPreset:
    """A preset by name (:data:`OPENAI_PRESETS`), or from a TOML file describing another
    openai-format checkpoint: ``method``, ``dataset``, ``shape``, ``network_kwargs`` (the ``adm``
    network's), ``method_fields`` (e.g. ``mode``, ``distance``, ``sample_sigmas`` of a CM),
    ``num_classes``; ``file`` names the source (default: the TOML file's stem)."""
    if name in OPENAI_PRESETS:
        return OPENAI_PRESETS[name]
    path = Path(name)
    if path.suffix != ".toml" or not path.is_file():
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(OPENAI_PRESETS)}, or a "
                         "preset file (.toml) describing another checkpoint (docs/reproduce.md)")
    from zoo.settings_file import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"preset file {path} is not valid TOML: {exc}") from None
    fields = {f.name for f in dataclasses.fields(OpenAIPreset)}
    unknown, missing = sorted(set(data) - fields), sorted(
        {"method", "dataset", "shape", "network_kwargs"} - set(data))
    if unknown or missing:
        raise ValueError(f"preset file {path}: " + "; ".join(
            ([f"unknown keys {', '.join(unknown)}"] if unknown else []) +
            ([f"missing {', '.join(missing)}"] if missing else [])) +
            f" (keys: {', '.join(sorted(fields))})")
    return OpenAIPreset(**{"file": path.stem, "method_fields": {}, **data,
                           "shape": tuple(data["shape"])})


def import_openai_run(checkpoint, run_dir, preset: str | OpenAIPreset, method: str | None = None,
                      dataset: str | None = None, check_data: bool | None = None) -> Path:
    """Write openai's released ``checkpoint`` as a ``cm`` or ``edm`` run (``preset``: a name of
    :data:`OPENAI_PRESETS` or a preset) on the preset's dataset (or ``dataset``).

    The network is ``adm`` with the preset's arguments, loaded with ``strict=True`` (every
    missing, unexpected or mismatched key in one error). EDM teachers get EDM's
    preconditioning, CD/CT students the consistency parameterisation (σ_min 0.002, σ_max 80,
    σ_d 0.5: cm/karras_diffusion.py ``KarrasDenoiser``); both feed the network 1000·c_noise
    (``noise_label_scale``), as ``KarrasDenoiser.denoise`` does.
    """
    if isinstance(preset, str):
        preset = read_preset(preset)
    if method and method != preset.method:
        raise ValueError(f"{preset.file} is a {preset.method!r} checkpoint, not {method!r}: "
                         f"use --method {preset.method} or another --preset")
    state_dict = load_openai_state_dict(checkpoint)
    data = dataset_record(dataset or preset.dataset, preset.shape, check_data)
    fields = dict(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
                  num_classes=preset.num_classes, **preset.method_fields)
    imported = {"file": f"{checkpoint} (preset for {preset.file})",
                "sha256": sha256_file(checkpoint), "format": "openai-consistency-models",
                "source": OPENAI_DOWNLOADS + preset.file}
    return write_imported_run(run_dir, preset.method, fields, "adm", dict(preset.network_kwargs),
                              state_dict, data, imported)
