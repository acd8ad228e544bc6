"""Samplers: plain functions ``sample(denoiser, x, sigmas, *, generator, **opts) -> x0``.

``x`` is the starting point at noise level ``sigmas[0]`` (``sigmas[0]·z``), ``sigmas`` the
decreasing grid to follow; diffusion samplers expect it to end at 0 (:func:`append_zero`).
Randomness comes from a per-sample generator (:mod:`zoo.diffusion.random`: Philox by default,
or EDM's one ``torch.Generator`` per sample), so a sample does not depend on its batch. Wrap the
denoiser in :class:`NFECounter` (or use :func:`run_sampler`) to count network evaluations.

A sampler declares the model output it consumes as its ``parameterization`` attribute
(:data:`MODEL_KINDS`: ``"edm"`` a denoiser D(x, σ), ``"consistency"`` f(x, σ), ...), and its
options as its keyword-only parameters after ``generator`` and ``class_labels``, each typed and
explained in its signature: ``S_churn: Annotated[float, "help"] = 0.0`` (:func:`sampler_options`
reads them, :func:`check_sampler_options` validates given values, :func:`resolve_sampler` does
both and the model check).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from typing import Annotated, Literal, Union

import torch
from tqdm.auto import tqdm

from zoo import plugins
from zoo.diffusion.precond import SIGMA_MIN, expand_sigma, ode_derivative
from zoo.diffusion.random import (
    StackedGenerator,
    check_stream,
    current_stream,
    per_sample_generator,
)
from zoo.distributed import all_max, gather_samples, shard
from zoo.hookspecs import hookimpl


class NFECounter:
    """Wraps a denoiser and counts its evaluations (one per call, whatever the batch)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x, sigma, class_labels=None):
        self.nfe += 1
        return self.denoiser(x, sigma, class_labels)


def euler_step(denoiser, x, sigma, sigma_next, class_labels=None):
    """One Euler step of the probability-flow ODE from σ to σ_next (1 NFE; = DDIM in σ-space)."""
    d = ode_derivative(denoiser(x, sigma, class_labels), x, sigma)
    return x + _delta(sigma_next, sigma, x) * d


def heun_step(denoiser, x, sigma, sigma_next, class_labels=None):
    """One step of Heun's 2nd-order method (EDM Algorithm 1, lines 5–8), 2 NFE.

    σ and σ_next may be scalars or one value per sample; all σ_next must be > 0 (the step to
    σ = 0 is an Euler step, see :func:`sample_heun`).
    """
    d = ode_derivative(denoiser(x, sigma, class_labels), x, sigma)
    h = _delta(sigma_next, sigma, x)
    x_euler = x + h * d
    d_next = ode_derivative(denoiser(x_euler, sigma_next, class_labels), x_euler, sigma_next)
    return x + h * (d + d_next) / 2


def _delta(sigma_next, sigma, x):
    return expand_sigma(sigma_next, x) - expand_sigma(sigma, x)


def check_sigmas(sigmas, *, sigma_min: float = 0.0, sigma_max: float = math.inf,
                 final_zero: bool = False, name: str = "sigmas") -> list[float]:
    """``sigmas`` as floats, refusing a grid that is empty, not finite, not strictly decreasing
    or outside [σ_min, σ_max] (``final_zero``: the grid ends at σ = 0, the others are checked).

    ``name`` is what the message calls the grid, e.g. the option ``--sigmas``."""
    values = [float(s) for s in sigmas]
    shown = f"{name} {','.join(f'{s:g}' for s in values)}"
    if len(values) < (2 if final_zero else 1):
        raise ValueError(f"{shown}: too short a σ grid")
    if not all(math.isfinite(s) for s in values):
        raise ValueError(f"{shown}: every σ must be a finite number")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{shown}: σ must be strictly decreasing")
    if final_zero and values[-1] != 0:
        raise ValueError(f"{shown}: a diffusion sampler's grid must end at sigma=0 (append_zero)")
    outside = [s for s in values[: -1 if final_zero else None] if not sigma_min <= s <= sigma_max]
    if outside:
        raise ValueError(f"{shown}: every σ must lie in "
                         f"[sigma_min, sigma_max] = [{sigma_min:g}, "
                         f"{sigma_max:g}]; out of range: {', '.join(f'{s:g}' for s in outside)}")
    return values


def parse_sigmas(text, *, sigma_min: float = 0.0, sigma_max: float = math.inf,
                 name: str = "sigmas") -> list[float]:
    """"80,0.8" (or a list) as a checked σ grid (:func:`check_sigmas`)."""
    values = text.split(",") if isinstance(text, str) else text
    try:
        values = [float(s) for s in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers like 80,0.8, got {text!r}") from None
    return check_sigmas(values, sigma_min=sigma_min, sigma_max=sigma_max, name=name)


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """Euler (DDIM) sampling: len(sigmas)−1 steps, 1 NFE each."""
    sigmas = check_sigmas(sigmas, final_zero=True)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = euler_step(denoiser, x, s, s_next, class_labels)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """EDM's deterministic sampler (Algorithm 1): Heun steps, the last one (to σ=0) Euler.

    N steps cost 2N−1 NFE: 18 steps = 35 NFE.
    """
    sigmas = check_sigmas(sigmas, final_zero=True)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        step = euler_step if s_next == 0 else heun_step
        x = step(denoiser, x, s, s_next, class_labels)
    return x


@torch.no_grad()
def sample_edm_stochastic(
    denoiser,
    x,
    sigmas,
    *,
    generator,
    class_labels=None,
    S_churn: Annotated[float, "Total churn: γ_i = min(S_churn/N, √2−1)."] = 0.0,
    S_tmin: Annotated[float, "Churn only at σ_i >= S_tmin."] = 0.0,
    S_tmax: Annotated[float, "Churn only at σ_i <= S_tmax."] = float("inf"),
    S_noise: Annotated[float, "Scale of the added noise."] = 1.0,
):
    """EDM's stochastic sampler (Algorithm 2): add noise to raise σ_i to σ̂ = σ_i(1+γ_i), then Heun.

    γ_i = min(S_churn/N, √2−1) for σ_i in [S_tmin, S_tmax], else 0; N = number of steps.
    With S_churn = 0 it is exactly :func:`sample_heun`.
    """
    for name, value in (("S_churn", S_churn), ("S_noise", S_noise), ("S_tmin", S_tmin)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} (--{name.lower().replace('_', '-')}) must be a finite "
                             f"number >= 0, got {value}")
    if not S_tmin <= S_tmax:
        raise ValueError(f"S_tmax (--s-tmax) must be >= S_tmin={S_tmin} (inf allowed), "
                         f"got {S_tmax}")
    sigmas = check_sigmas(sigmas, final_zero=True)
    n_steps = len(sigmas) - 1
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = min(S_churn / n_steps, math.sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = generator.randn_like(x) * S_noise
            x = x + math.sqrt(s_hat**2 - s**2) * eps
        step = euler_step if s_next == 0 else heun_step
        x = step(denoiser, x, s_hat, s_next, class_labels)
    return x


@torch.no_grad()
def sample_consistency(
    denoiser,
    x,
    sigmas,
    *,
    generator=None,
    class_labels=None,
    sigma_min: Annotated[float, "ε of the re-noising √(σ² − ε²)."] = SIGMA_MIN,
    clip: Annotated[tuple[float, float] | None, "Data range to clip to, e.g. [-1, 1]."] = None,
):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1); one NFE per σ.

    x ← f(x, σ_0); then for each further σ: x ← f(x + √(σ² − σ_min²)·z, σ). The denoised
    estimate is clipped to the data range ``clip`` (images: (−1, 1)) after every step.
    With one σ this is one-step generation f(σ_max·z, σ_max).
    """
    if not (math.isfinite(sigma_min) and sigma_min >= 0):
        raise ValueError(f"sampler 'consistency': option sigma_min must be a finite number >= 0 "
                         f"(the ε of the model), got {sigma_min}")
    sigmas = check_sigmas(sigmas, sigma_min=sigma_min)
    for i, s in enumerate(sigmas):
        if i > 0:
            x = x + math.sqrt(s**2 - sigma_min**2) * generator.randn_like(x)
        x = denoiser(x, s, class_labels)
        if clip is not None:
            x = x.clamp(*clip)
    return x


# The model output a sampler consumes (see :data:`MODEL_KINDS`); a registered sampler without the
# attribute is taken to fit any model.
for _sampler in (sample_euler, sample_heun, sample_edm_stochastic):
    _sampler.parameterization = "edm"
sample_consistency.parameterization = "consistency"
#: What each parameterisation means, for messages: a method's runs give one of these
#: (:attr:`zoo.methods.Method.parameterization`), a sampler consumes one.
MODEL_KINDS = {"edm": "diffusion model", "consistency": "consistency model",
               "velocity": "velocity field (flow)",
               "average-velocity": "average-velocity model (MeanFlow)"}

SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "edm-stochastic": sample_edm_stochastic,
    "consistency": sample_consistency,
}


@hookimpl
def register_samplers(register):
    for name, fn in SAMPLERS.items():
        register(name, fn)


def _fits(sampler, parameterization) -> bool:
    return getattr(sampler, "parameterization", parameterization) == parameterization


def _kind(parameterization) -> str:
    return MODEL_KINDS.get(parameterization, f"{parameterization!r} model")


def sampler_names(parameterization: str | None = None) -> list[str]:
    """The registered samplers, those for a model of ``parameterization`` (a denoiser's
    ``parameterization``: edm, consistency, ...) where given."""
    from zoo.plugins import registry

    samplers = registry("samplers")
    return [n for n in samplers.names()
            if parameterization is None or _fits(samplers.get(n), parameterization)]


def get_sampler(name: str, model):
    """The registered sampler ``name``, refusing one made for another kind of model than
    ``model`` (a parameterization such as ``"edm"``, or a denoiser with that attribute) with the
    samplers that fit it. An unknown name lists the registered samplers."""
    from zoo.plugins import get

    fn = get("samplers", name)
    kind = model if isinstance(model, str) or model is None else getattr(
        model, "parameterization", None)
    if not _fits(fn, kind):
        valid = sampler_names(kind)
        raise ValueError(
            f"sampler {name!r} needs a {_kind(fn.parameterization)}, but this run is a "
            f"{_kind(kind)}; valid samplers for it: {', '.join(valid) or '(none)'}")
    return fn


def parse_sampler_options(options) -> dict:
    """Sampler options given as a dict or as JSON text (``--sampler-options``; None: none)."""
    import json

    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--sampler-options must be JSON: {exc}") from None
    if not isinstance(options or {}, dict):
        raise ValueError(f"--sampler-options must be a JSON object, got {options!r}")
    return dict(options or {})


def count_nfe(sampler, sigmas, shape=(1,), **options) -> int:
    """The NFE ``sampler`` spends on the grid ``sigmas``, counted on one sample of ``shape``
    with a stand-in model that returns its input (no network runs): what a deterministic or
    stochastic sampler whose step count does not depend on the model costs per sample."""
    x = torch.zeros(1, *shape)
    _, nfe = run_sampler(sampler, lambda x, sigma, class_labels=None: x, x, sigmas,
                         generator=StackedGenerator([0]), **options)
    return nfe


@dataclasses.dataclass(frozen=True)
class SamplerOption:
    """One option of a sampler, read from its signature by :func:`sampler_options`."""

    name: str
    type: object
    default: object
    help: str

    def type_name(self) -> str:
        if typing.get_origin(self.type) is Literal:
            return "one of " + ", ".join(repr(a) for a in typing.get_args(self.type))
        return getattr(self.type, "__name__", str(self.type))

    def describe(self) -> str:
        """``name (type, default D): help`` as ``zoo sample --help`` lists it."""
        text = f"{self.name} ({self.type_name()}, default {self.default!r})"
        return f"{text}: {self.help}" if self.help else text


#: The option types a sampler may declare (plus Literal[...] choices, tuple[...] of them and
#: ``X | None``), each checked and converted by :func:`check_sampler_options`.
OPTION_TYPES = (bool, int, float, str)


def _supported_type(tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return all(isinstance(a, (bool, int, float, str)) for a in args)
    if origin in (Union, types.UnionType, tuple):
        return all(_supported_type(a) for a in args)
    return tp in OPTION_TYPES or tp is type(None)


def check_sampler(name: str, fn) -> None:
    """Refuse at registration a sampler that is not callable, or whose options lack a default
    or have a type outside :data:`OPTION_TYPES` (their values could not be checked)."""
    if not callable(fn):
        raise TypeError(f"sampler {name!r} must be callable, got {type(fn).__name__}")
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name not in HOUSE_KEYWORDS and p.default is p.empty:
            raise TypeError(f"sampler {name!r}: option {p.name} has no default (a sampler "
                            "runs with no options given)")
    for option in sampler_options(fn).values():
        if not _supported_type(option.type):
            raise TypeError(f"sampler {name!r}: option {option.name} has type "
                            f"{option.type_name()}; supported: bool, int, float, str, "
                            "Literal[...] choices, tuple[...] of them, X | None")


#: Keyword-only parameters of the house signature that are not options.
HOUSE_KEYWORDS = ("generator", "class_labels")


def sampler_options(fn) -> dict[str, SamplerOption]:
    """A sampler's options: its keyword-only parameters other than :data:`HOUSE_KEYWORDS`, typed
    by their annotation (``Annotated[type, "help"]`` adds the help), else by their default."""
    hints = typing.get_type_hints(fn, include_extras=True)
    options = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is not p.KEYWORD_ONLY or name in HOUSE_KEYWORDS:
            continue
        tp, help_text = hints.get(name, type(p.default)), ""
        if typing.get_origin(tp) is Annotated:
            tp, *extras = typing.get_args(tp)
            help_text = " ".join(e for e in extras if isinstance(e, str))
        options[name] = SamplerOption(name, tp, p.default, help_text)
    return options


def _coerce(value, tp):
    """``value`` as type ``tp`` (an int given for a float, a list for a tuple); TypeError if
    it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(value, bool):
        if tp is bool:
            return value
    elif tp is float and isinstance(value, int):
        return float(value)
    elif isinstance(value, tp):
        return value
    raise TypeError


def check_sampler_options(name: str, fn, options: dict) -> dict:
    """``options`` for the sampler ``name`` (function ``fn``), typed; an option it does not take
    or a value of the wrong type is an error naming what it accepts."""
    accepted = sampler_options(fn)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        listed = ", ".join(f"{o.name} ({o.type_name()})" for o in accepted.values())
        raise ValueError(f"sampler {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{listed or '(none)'}")
    out = {}
    for key, value in options.items():
        try:
            out[key] = _coerce(value, accepted[key].type)
        except TypeError:
            raise ValueError(f"sampler {name!r}: option {key} must be "
                             f"{accepted[key].type_name()}, got {value!r}") from None
    return out


def resolve_sampler(name: str, parameterization, options=None, defaults=None):
    """``(fn, options)`` for sampling a model of ``parameterization`` with the registered sampler
    ``name``: refuses an unknown sampler, one for another kind of model (:func:`get_sampler`)
    and options it does not take or of the wrong type (:func:`check_sampler_options`).
    ``options`` (a dict or JSON text) are the user's; ``defaults`` are the calling method's own
    settings (e.g. a data range to clip to), passed only to a sampler that takes them and
    overridden by ``options``."""
    fn = get_sampler(name, parameterization)
    accepted = sampler_options(fn)
    given = {**{k: v for k, v in (defaults or {}).items() if k in accepted},
             **parse_sampler_options(options)}
    return fn, check_sampler_options(name, fn, given)


def run_sampler(sampler, denoiser, x, sigmas, *, generator=None, **opts):
    """Run a sampler (a function or a registered name) and return ``(x0, nfe)``."""
    if isinstance(sampler, str):
        from zoo.plugins import get

        sampler = get("samplers", sampler)
    counter = NFECounter(denoiser)
    out = sampler(counter, x, sigmas, generator=generator, **opts)
    return out, counter.nfe


def generate(
    denoiser,
    sampler,
    sigmas,
    shape,
    seeds,
    *,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
    device="cpu",
    progress: bool = False,
    distributed: bool = True,
    stream: str | None = None,
    **opts,
):
    """Draw one sample per seed: x_T = σ_0·z with z from the sample's own seed, then the sampler.
    ``stream`` (:data:`~zoo.diffusion.random.STREAMS`): ``philox``, per-sample Philox computed
    for the whole batch at once, or ``torch``, EDM's per-sample ``torch.Generator``; ``None``:
    the one in force (:func:`~zoo.diffusion.random.noise_stream`, else ``philox``).

    ``labels`` (int64, one per seed; :func:`zoo.methods.draw_labels`) condition a
    class-conditional model: the sampler gets them as ``class_labels``. Returns ``(x0, nfe)``,
    NFE per sample. Samples do not depend on ``batch_size``. Under torch.distributed (and
    ``distributed=True``; every rank must then call it) each rank samples its contiguous share
    of the seeds and all get every sample, in seed order: the same samples as one process.
    """
    stream = check_stream(stream or current_stream())
    seeds = seeds if isinstance(seeds, range) else list(seeds)
    total = len(seeds)
    if labels is not None and len(labels) != total:
        raise ValueError(f"{len(labels)} class labels for {total} seeds")
    if distributed:
        seeds = shard(seeds)
        labels = None if labels is None else shard(labels)
    sigma_0 = float(sigmas[0])
    outs, nfe = [torch.empty(0, *shape)], 0
    for start in tqdm(range(0, len(seeds), batch_size), disable=not progress, desc="sampling"):
        gen = per_sample_generator(seeds[start : start + batch_size], device, stream)
        x = gen.randn(shape).to(device) * sigma_0
        if labels is not None:
            opts["class_labels"] = labels[start : start + batch_size].to(device)
        out, nfe = run_sampler(sampler, denoiser, x, sigmas, generator=gen, **opts)
        outs.append(out.cpu())
    x0 = torch.cat(outs)
    if distributed:
        x0, nfe = gather_samples(x0, total), all_max(nfe)
    return x0, nfe


plugins.add_object_check("samplers", check_sampler)
