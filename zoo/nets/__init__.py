"""Score networks F(x, c_noise, class_labels), registered by name through ``register_networks``.

Every factory has the signature ``factory(data_shape, label_dim=0, **kwargs) -> nn.Module``:
``data_shape`` is (C, H, W) for images and (D,) for vectors; ``kwargs`` override the preset.

- ``ddpmpp``: DDPM++ as EDM trains it on CIFAR-10 (``--arch=ddpmpp``, Karras et al. 2022).
- ``ncsnpp``: NCSN++ as EDM trains it on CIFAR-10 (``--arch=ncsnpp``).
- ``ddpmpp-small``: the same SongUNet at CPU size, for 8×8 digits and small images.
- ``songunet``: SongUNet with EDM's defaults; every option is a keyword.
- ``mlp``: :class:`MLPDenoiserNet` for vector data (2D toy distributions).
- ``adm``: :class:`ADMUNet`, the U-Net of openai/consistency_models' released checkpoints.
"""

from __future__ import annotations

import inspect
import math

from torch import nn

from zoo import plugins
from zoo.hookspecs import hookimpl
from zoo.nets.adm import ADMUNet
from zoo.nets.mlp import MLPDenoiserNet
from zoo.nets.songunet import SongUNet

__all__ = [
    "ADMUNet",
    "DDPMPP_CIFAR10",
    "NCSNPP_CIFAR10",
    "MLPDenoiserNet",
    "SongUNet",
    "build_network",
    "count_parameters",
    "ddpmpp_small_config",
]

#: EDM's CIFAR-10 DDPM++ (train.py ``--arch=ddpmpp``, dropout 0.13 as for CIFAR-10).
DDPMPP_CIFAR10 = dict(
    model_channels=128,
    channel_mult=(2, 2, 2),
    channel_mult_noise=1,
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=(1, 1),
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.13,
)
#: EDM's CIFAR-10 NCSN++ (train.py ``--arch=ncsnpp``).
NCSNPP_CIFAR10 = dict(
    DDPMPP_CIFAR10,
    embedding_type="fourier",
    channel_mult_noise=2,
    encoder_type="residual",
    resample_filter=(1, 3, 3, 1),
)


def ddpmpp_small_config(resolution: int) -> dict:
    """A CPU-sized DDPM++: two levels below 16 px (8×8 digits), three from 16 px up."""
    return dict(
        DDPMPP_CIFAR10,
        model_channels=32,
        channel_mult=(1, 2) if resolution < 16 else (1, 2, 2),
        num_blocks=2,
        attn_resolutions=(resolution // 2,),
        dropout=0.0,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def _check_options(name: str, cls, kwargs: dict, fixed: tuple[str, ...]) -> None:
    """Refuse options the network does not take, and values of another kind than the option's
    default: an integer where the default is a positive integer (a size: positive too), a
    finite real where it is a float (non-negative where the default is), a bool for a bool, a
    list for a tuple or list."""
    params = inspect.signature(cls).parameters
    accepted = [p for p in params if p not in fixed]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"network {name!r} got unknown option(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(accepted)}"
            + (f" ({', '.join(fixed)} come from data_shape and label_dim)" if fixed else "")
        )
    for key, value in kwargs.items():
        default = params[key].default
        problem = None
        if isinstance(default, bool):
            problem = None if isinstance(value, bool) else "true or false"
        elif isinstance(default, int) and default > 0:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            problem = None if ok else "a positive integer"
        elif isinstance(default, float):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and (value >= 0 or default < 0))
            problem = None if ok else ("a finite number" + (" >= 0" if default >= 0 else ""))
        elif isinstance(default, (tuple, list)):
            problem = None if isinstance(value, (tuple, list)) else "a list"
        if problem:
            raise TypeError(f"network {name!r}: option {key} must be {problem} (its default is "
                            f"{default!r}), got {value!r}")


def _unet_factory(name: str, cls, preset):
    fixed = ("img_resolution", "in_channels", "label_dim")

    def factory(data_shape, label_dim: int = 0, **kwargs):
        """``label_dim``: the run's ``num_classes`` (0: unconditional)."""
        data_shape = tuple(data_shape)
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(
                f"network {name!r} needs a square image data_shape (C, H, W) with H == W, "
                f"got {data_shape}"
            )
        _check_options(name, cls, kwargs, fixed)
        channels, resolution = data_shape[0], data_shape[1]
        options = {"out_channels": channels, **preset(resolution), **kwargs}
        return cls(img_resolution=resolution, in_channels=channels, label_dim=label_dim, **options)

    factory.__doc__ = f"Build the {name!r} {cls.__name__} for data_shape (C, H, W).\n" + (
        factory.__doc__ or "")
    return factory


def mlp_factory(data_shape, label_dim: int = 0, **kwargs) -> MLPDenoiserNet:
    """Build an :class:`MLPDenoiserNet` for vector data_shape (D,)."""
    data_shape = tuple(data_shape)
    if len(data_shape) != 1:
        raise ValueError(f"network 'mlp' needs a vector data_shape (D,), got {data_shape}")
    _check_options("mlp", MLPDenoiserNet, kwargs, ("dim", "label_dim"))
    return MLPDenoiserNet(data_shape[0], label_dim=label_dim, **kwargs)


FACTORIES = {
    "ddpmpp": _unet_factory("ddpmpp", SongUNet, lambda res: DDPMPP_CIFAR10),
    "ncsnpp": _unet_factory("ncsnpp", SongUNet, lambda res: NCSNPP_CIFAR10),
    "ddpmpp-small": _unet_factory("ddpmpp-small", SongUNet, ddpmpp_small_config),
    "songunet": _unet_factory("songunet", SongUNet, lambda res: {}),
    "mlp": mlp_factory,
    "adm": _unet_factory("adm", ADMUNet, lambda res: {}),
}


@hookimpl
def register_networks(register):
    for name, factory in FACTORIES.items():
        register(name, factory)


def build_network(name: str, data_shape, label_dim: int = 0, **kwargs) -> nn.Module:
    """Build the registered network ``name``; unknown names raise
    :class:`zoo.plugins.UnknownNameError` listing the valid ones."""
    return plugins.get("networks", name)(tuple(data_shape), label_dim=label_dim, **kwargs)
