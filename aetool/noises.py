"""Noises: what one is, the registry that plugins fill, and specs like `gaussian:sigma=0.1|0.3`.

A `Noise` turns a batch of float images (N, C, H, W) on any device into a corrupted batch,
drawing randomness only from the `torch.Generator` it is given. Plugins register noises
through the `register_noises(register)` hook (see `aetool.plugins.hookspecs`); the built-ins in
`aetool.plugins.default` do exactly what a third-party plugin does.

On the command line a noise is `NAME` or `NAME:param=value,...`; a value may list several
alternatives separated by `|` to sweep, so `gaussian:sigma=0.1|0.3` is two configured noises.
`original` (no noise) is always available; it is not a plugin.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aetool import plugins
from aetool.errors import AetoolError, first_line
from aetool.plugins.params import (  # noqa: F401 (API)
    PARAM_TYPES,
    Param,
    WithParams,
    format_value,
    spec_of,
    split_spec,
)

NoiseParam = Param  # a noise's parameter: the typed parameter every plugin kind uses

ORIGINAL_NAME = "original"
# The report's Table 1: no noise, five Gaussian sigmas, occlusion, uniform.
DEFAULT_NOISE_SPECS = ("original", "gaussian:sigma=0.1|0.3|0.5|1|2", "occlusion", "uniform")


@dataclass(frozen=True)
class Noise(WithParams):
    """A named corruption: `apply(x, generator, **params)` returns the corrupted batch."""

    name: str
    description: str
    apply: Callable[..., torch.Tensor]
    params: tuple[NoiseParam, ...] = ()
    # Optional short label for tables, from the parameter values (default: name(p=v, ...)).
    label: Callable[..., str] | None = None
    plugin: str | None = None  # filled in by the registry: the plugin that registered it
    kind = "noise"  # how messages call it
    # Optional check of the parameters together (`low` below `high`...): `validate(**params)`
    # raises ValueError with one sentence when the combination cannot work.
    validate: Callable[..., None] | None = None

    def configure(self, **params: Any) -> ConfiguredNoise:
        """This noise with some parameters set (checked); the rest keep their defaults."""
        values = self.defaults()
        for name, value in params.items():
            try:
                values[name] = self.param(name).check(value)
            except AetoolError as exc:
                raise AetoolError(f"Noise {self.name!r}: {exc}") from None
        return self.checked(values)

    def checked(self, values: dict[str, Any]) -> ConfiguredNoise:
        """This noise with all its parameter `values`, after its own `validate` passed and
        a probe batch showed that the values make images a model can be trained on."""
        if self.validate is not None:
            try:
                self.validate(**values)
            except (ValueError, AetoolError) as exc:
                raise AetoolError(f"Noise {self.name!r}: {str(exc).rstrip('.')}.") from None
        configured = ConfiguredNoise(self, values)
        configured.check_values()
        return configured


class NoisePluginError(AetoolError):
    """A noise's `apply` raised, or returned something other than a batch of the shape it was
    given: the plugin that registered it is broken (named in the message)."""


# Noisy images whose squares overflow float32 make every loss infinite: a noise whose values
# reach this far is refused with its parameters (`gaussian:sigma=1e30`), not trained on.
LARGEST_VALUE = math.sqrt(torch.finfo(torch.float32).max)
_PROBE_SHAPE = (2, 1, 28, 28)


@dataclass
class ConfiguredNoise:
    """A noise with all its parameter values: a `NoiseFn(x, generator)` for training and tables."""

    noise: Noise
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.noise.name

    @property
    def label(self) -> str:
        """A short row label: `original`, `N(0,0.1)`, `occlusion`, `uniform(low=-0.5)`..."""
        if self.noise.label is not None:
            return self.noise.label(**self.params)
        changed = {k: v for k, v in self.params.items() if self.noise.defaults().get(k) != v}
        if not changed:
            return self.name
        return f"{self.name}({','.join(f'{k}={format_value(v)}' for k, v in changed.items())})"

    @property
    def spec(self) -> str:
        """The spec that rebuilds this exact noise, e.g. `gaussian:sigma=0.1,clip=false`."""
        return spec_of(self.name, self.params)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The corrupted batch; a `NoisePluginError` naming the plugin when `apply` raises or
        returns anything but a tensor of x's shape."""
        try:
            out = self.noise.apply(x, generator, **self.params)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug becomes one sentence
            raise NoisePluginError(f"The {self._origin()} failed on a batch of shape "
                                   f"{tuple(x.shape)}: {type(exc).__name__}: "
                                   f"{first_line(exc).rstrip('.')}.") from None
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else \
                f"a {type(out).__name__}"
            raise NoisePluginError(f"The {self._origin()} returned {got} for a batch of shape "
                                   f"{tuple(x.shape)}; a noise returns a batch of the shape it "
                                   "gets.")
        return out

    def _origin(self) -> str:
        plugin = f" (aetool plugin {self.noise.plugin})" if self.noise.plugin else ""
        return f"noise {self.name!r}{plugin}"

    def check_values(self) -> None:
        """Refuse parameter values that make images no model can be trained on: infinite or
        NaN values, or values whose squares overflow (an AetoolError naming the spec), seen
        on a small probe batch. A noise that fails on the probe is left to fail, naming its
        plugin, where it is used (`aetool noises check` reports it)."""
        x = torch.rand(_PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
        try:
            out = self(x, torch.Generator().manual_seed(0)).detach().float()
        except NoisePluginError:
            return
        if not bool(torch.isfinite(out).all()):
            raise AetoolError(f"Noise {self.spec} makes images with infinite or NaN values; "
                              "choose smaller parameter values.")
        largest = float(out.abs().max()) if out.numel() else 0.0
        if largest > LARGEST_VALUE:
            raise AetoolError(f"Noise {self.spec} makes images with values too large to train "
                              f"on (up to {largest:.3g}; at most {LARGEST_VALUE:.3g} keeps their "
                              "squared errors finite); choose smaller parameter values.")

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "noise": self.name, "params": dict(self.params)}


def _identity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


ORIGINAL = Noise(ORIGINAL_NAME, "No noise: the clean image.", _identity)


# --------------------------------------------------------------------------- random draws
# Helpers for noise plugins: draw on the generator's device, then move to the images' device,
# so a CPU generator works for images on cuda or mps (and a cuda generator for cuda images).


def _on(x: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    return drawn if drawn.device == x.device else drawn.to(x.device, non_blocking=True)


def rand_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U[0, 1) of x's shape, dtype and device, drawn from `generator`."""
    drawn = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return _on(x, drawn)


def randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) of x's shape, dtype and device, drawn from `generator`."""
    drawn = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return _on(x, drawn)


def randint_for(
    x: torch.Tensor, low: int, high: int, size: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """Integers in [low, high) of shape `size`, on x's device, drawn from `generator`."""
    drawn = torch.randint(low, high, tuple(size), generator=generator, device=generator.device)
    return _on(x, drawn)


# --------------------------------------------------------------------------- the registry

def registered_noises() -> dict[str, Noise]:
    """Every noise the plugins register, by name, each with `.plugin` set to its plugin.

    Plugins are asked in the order they were registered; the first to register a name keeps
    it, and a later one gets a `PluginWarning` naming both. A plugin whose hook raises or
    registers something that is not a `Noise` gets a warning; the others keep working.
    """
    return plugins.collect("register_noises", Noise, "noise", reserved=(ORIGINAL_NAME,),
                           field="noise")


def get_noise(name: str) -> Noise:
    """The noise called `name` (or `original`); an AetoolError listing what exists if none."""
    if name == ORIGINAL_NAME:
        return ORIGINAL
    noises = registered_noises()
    if name not in noises:
        known = ", ".join([ORIGINAL_NAME, *sorted(noises)])
        raise AetoolError(f"Unknown noise {name!r}; the registered noises are: {known} "
                          "(`aetool noises` lists their parameters).")
    return noises[name]


# --------------------------------------------------------------------------- specs


def parse_noise_spec(spec: str) -> list[ConfiguredNoise]:
    """`NAME` or `NAME:param=value,...` (a value may be `a|b|c`) -> one noise per combination."""
    name, pairs = split_spec(spec, "noise")
    noise = get_noise(name)
    if "/" in name:  # `PACKAGE/NAME`: runs and tables keep the package it was given with
        noise = dataclasses.replace(noise, name=name)
    alternatives: dict[str, list[Any]] = {}
    for key, value in pairs:
        param = noise.param(key)
        try:
            alternatives[key] = [param.parse(v) for v in value.split("|")]
        except AetoolError as exc:
            raise AetoolError(f"Noise {spec!r}: {exc}") from None
    keys = list(alternatives)
    configured = []
    for values in itertools.product(*(alternatives[k] for k in keys)):
        params = noise.defaults()
        params.update(zip(keys, values, strict=True))
        configured.append(noise.checked(params))
    return configured


def parse_noise_specs(specs: Sequence[str]) -> list[ConfiguredNoise]:
    """Several specs, sweeps expanded, in order; exact repeats are dropped."""
    configured: list[ConfiguredNoise] = []
    seen: set[str] = set()
    for spec in specs:
        for noise in parse_noise_spec(spec):
            if noise.spec not in seen:
                seen.add(noise.spec)
                configured.append(noise)
    return configured


def build_noise(spec: str) -> ConfiguredNoise:
    """Exactly one configured noise (a `NoiseFn` for `fit --noise`); a sweep is an error."""
    configured = parse_noise_spec(spec)
    if len(configured) != 1:
        raise AetoolError(f"Noise {spec!r} describes {len(configured)} noises; "
                          "training takes exactly one (no a|b sweeps).")
    return configured[0]


def describe_noises() -> list[dict[str, Any]]:
    """Every registered noise as plain data: name, plugin, package, description, parameters."""
    rows = []
    for name, noise in sorted(registered_noises().items()):
        dist = plugins.distribution_of(noise.plugin or "")
        rows.append({
            "name": name,
            "plugin": noise.plugin,
            "package": f"{dist[0]} {dist[1]}" if dist else None,
            "description": noise.description,
            "params": [
                {"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                 "choices": list(p.choices) if p.choices else None}
                for p in noise.params
            ],
        })
    return rows
