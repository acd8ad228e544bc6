"""Hook specifications: the only contract between the core and plugins.

Each hook receives a ``register`` callable. A plugin calls it once per thing it adds::

    import zoo

    @zoo.hookimpl
    def register_methods(register):
        register("cm", ConsistencyModels())

The name is the key users type on the command line; registering a name twice is an error that
names both sources. ``zoo.hookimpl`` (this module's ``hookimpl``) marks the implementations;
docs/plugin-api.md is the reference of every hook and of what it registers.
"""

import pluggy

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def register_methods(register):
    """Register training methods: ``register(name, method)`` with a :class:`zoo.methods.Method`."""


@hookspec
def register_networks(register):
    """Register network factories: ``register(name, factory)``.

    ``factory(data_shape, label_dim=0, **kwargs)`` returns an ``nn.Module`` with
    ``forward(x, noise_labels, class_labels=None)``; data_shape is (C, H, W) or (D,).
    """


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, loader)``, ``loader(**options) -> zoo.data.Dataset``.

    The loader may declare ``loader.scale`` (the methods' preset family: ``toy``, ``digits``,
    ``cifar10``, ...) and ``loader.sigma_data`` (the data's standard deviation σ_data, which
    method presets use unless the user passes ``--sigma-data``).
    """


@hookspec
def register_samplers(register):
    """Register samplers: ``register(name, fn)``,
    ``fn(denoiser, x, sigmas, *, generator=None, class_labels=None, **options) -> x0``;
    ``zoo.diffusion.samplers.generate`` forwards the keywords it does not name as ``options``."""


@hookspec
def register_metrics(register):
    """Register metrics: ``register(name, metric)`` with a :class:`zoo.metrics.Metric`."""
