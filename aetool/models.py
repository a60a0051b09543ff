"""Architectures: what one is, the registry that plugins fill, specs like `wide:width=16`, and
building a model that keeps the autoencoder contract.

A `Model` has a name, a one-line description, typed parameters (`Param`, as noises have) and
`build(ed, **params) -> nn.Module`. The module maps a float batch (N, 1, 28, 28) in [0, 1] to
codes with `encode(x) -> (N, ed)`, codes to images in [0, 1] with `decode(z) -> (N, 1, 28, 28)`,
and `forward(x) = decode(encode(x))`. Plugins register models through the
`register_models(register)` hook; the built-ins in `aetool.plugins.default` (`course`, the
report's architecture, and `wide`) do exactly what a third-party plugin does. Every model a
run trains is checked once on a dummy batch before anything is trained (`build_model`).

A run's `config.json` records its model as a spec with every parameter (`wide:width=16,...`);
a run folder without one is a `course` run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aetool import plugins
from aetool.errors import AetoolError, SettingError
from aetool.files import load_torch
from aetool.plugins.params import Param, WithParams, spec_of, split_spec

DEFAULT_MODEL = "course"
SIDE = 28  # the images every model takes: (N, 1, 28, 28)


@dataclass(frozen=True)
class Model(WithParams):
    """A named architecture: `build(ed, **params)` returns a fresh autoencoder module."""

    name: str
    description: str
    build: Callable[..., nn.Module]
    params: tuple[Param, ...] = ()
    plugin: str | None = None  # filled in by the registry: the plugin that registered it
    kind = "model"  # how messages call it


@dataclass(frozen=True)
class ModelSpec:
    """A model with all its parameter values: what a run trains."""

    model: Model
    params: dict[str, Any] = field(default_factory=dict)
    spelled: str | None = None  # the name as given (`PACKAGE/NAME` where two packages clash)

    @property
    def name(self) -> str:
        return self.spelled or self.model.name

    @property
    def spec(self) -> str:
        """The spec that rebuilds this exact model, every parameter spelt out."""
        return spec_of(self.name, self.params)

    def build(self, ed: int) -> nn.Module:
        """A fresh module for encoding dimension `ed`, checked against the contract."""
        try:
            module = self.model.build(ed, **self.params)
        except AetoolError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's constructor may raise anything
            raise SettingError("model", f"Model {self.spec!r} (plugin {self.model.plugin}) could "
                           f"not be built: {type(exc).__name__}: {exc}") from None
        check_contract(module, ed, self)
        return module


def registered_models() -> dict[str, Model]:
    """Every model the plugins register, by name, each with `.plugin` set to its plugin."""
    return plugins.collect("register_models", Model, "model", field="model")


def get_model(name: str) -> Model:
    models = registered_models()
    if name not in models:
        raise SettingError("model", f"Unknown model {name!r}; the registered models are: "
                           f"{', '.join(sorted(models))} (`aetool models` lists them).")
    return models[name]


def parse_model_spec(spec: str | None) -> ModelSpec:
    """`NAME` or `NAME:param=value,...` -> the model with every parameter's value (checked);
    None is the default model. A bad spec is a `SettingError` for the field `model`."""
    try:
        name, pairs = split_spec(spec or DEFAULT_MODEL, "model")
        model = get_model(name)
        values = model.defaults()
        for key, text in pairs:
            values[key] = model.param(key).parse(text)
    except SettingError:
        raise
    except AetoolError as exc:
        raise SettingError("model", f"Model {spec!r}: {exc}") from None
    return ModelSpec(model, values, name if "/" in name else None)


def build_model(spec: str | None, ed: int, device: torch.device | str = "cpu") -> nn.Module:
    """A fresh, checked module of the model `spec` for encoding dimension `ed` on `device`."""
    return parse_model_spec(spec).build(ed).to(device)


@torch.no_grad()
def check_contract(module: Any, ed: int, spec: ModelSpec) -> None:
    """Run the module once on a dummy batch: `encode` gives (N, ed), `decode` and `forward`
    give (N, 1, 28, 28) in [0, 1]. Anything else is one sentence naming the model's plugin."""
    where = f"Model {spec.spec!r} (plugin {spec.model.plugin})"
    if not isinstance(module, nn.Module) or not all(
            callable(getattr(module, m, None)) for m in ("encode", "decode", "forward")):
        raise SettingError("model", f"{where} did not build an nn.Module with encode, decode "
                           "and forward.")
    was_training = module.training
    module.eval()
    x = torch.rand(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    try:
        z = module.encode(x)
        out = {"encode": (z, (2, ed))}
        if isinstance(z, torch.Tensor) and tuple(z.shape) == (2, ed):  # else decode fails on it
            out.update(decode=(module.decode(z), (2, 1, SIDE, SIDE)),  # in torch's words
                       forward=(module(x), (2, 1, SIDE, SIDE)))
    except Exception as exc:  # noqa: BLE001 - any failure on the dummy batch is the plugin's
        raise SettingError("model", f"{where} fails on a batch of 28x28 images: "
                           f"{type(exc).__name__}: {exc}") from None
    finally:
        module.train(was_training)
    for method, (value, shape) in out.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            codes = f" ({ed} numbers per image, the encoding dimension)" if method == "encode" \
                else ""
            raise SettingError("model", f"{where}: {method} returned shape {got}, not "
                               f"{shape}{codes}.")
    for method in ("decode", "forward"):
        value = out[method][0]
        if not bool(((value >= 0) & (value <= 1)).all()):
            raise SettingError("model", f"{where}: {method} returned values outside [0, 1].")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_state(spec: str | None, ed: int) -> dict[str, torch.Tensor] | None:
    """The state_dict the model `spec` has at `ed`, as tensors on PyTorch's `meta` device
    (shapes and dtypes, no memory), or None when the model cannot be built that way. A
    `SettingError` when the spec is unknown or bad."""
    parsed = parse_model_spec(spec)
    try:
        with torch.device("meta"):
            module = parsed.model.build(ed, **parsed.params)
        return dict(module.state_dict()) if isinstance(module, nn.Module) else None
    except Exception:  # noqa: BLE001 - a plugin's constructor may not support `meta`
        return None


def parameter_count(spec: str | None, ed: int) -> int | None:
    """How many weights the model `spec` has at `ed`, counted without allocating them (None
    when the model cannot be built here)."""
    try:
        parsed = parse_model_spec(spec)
        with torch.device("meta"):
            module = parsed.model.build(ed, **parsed.params)
        return count_parameters(module) if isinstance(module, nn.Module) else None
    except Exception:  # noqa: BLE001 - unknown model, bad parameters, a plugin's error
        return None


def state_mismatch(state: dict[str, Any], expected: dict[str, torch.Tensor]) -> str | None:
    """How checkpoint `state` differs from the state_dict `expected` (keys, shapes, kinds of
    number), in a few words; None when it fits."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        return (f"it lacks {missing[0]!r}" if missing else f"it has an unknown entry "
                f"{str(extra[0])[:60]!r}")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"{key} has shape {tuple(got.shape)}, not {tuple(want.shape)}"
        if want.is_floating_point() and not got.is_floating_point():
            return f"{key} holds {str(got.dtype).replace('torch.', '')} values, not floats"
    return None


def check_finite(state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Refuse weights that are NaN or infinite: a damaged file, or a training that diverged."""
    for key, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(
                torch.isfinite(value).all()):
            raise AetoolError(f"{path} holds weights that are not finite numbers (NaN or "
                              f"infinite, in {key}); the file is damaged or the training "
                              "diverged.")


def load_weights(spec: str | None, ed: int, path: Path | str,
                 device: torch.device | str = "cpu") -> nn.Module:
    """Deprecated (goes in the next release): `load_model(path, ed, device, model=spec)`."""
    warnings.warn("aetool.models.load_weights is deprecated and goes in the next release; use "
                  "aetool.models.load_model(path, ed, device, model=spec) instead.",
                  DeprecationWarning, stacklevel=2)
    return load_model(path, ed, device, model=spec)


def describe_models(ed: int = 4) -> list[dict[str, Any]]:
    """Every registered model as plain data, with its parameter count at encoding dimension
    `ed` (built with its defaults)."""
    rows = []
    for name, model in sorted(registered_models().items()):
        dist = plugins.distribution_of(model.plugin or "")
        try:
            count: int | None = count_parameters(ModelSpec(model, model.defaults()).build(ed))
        except AetoolError:
            count = None
        rows.append({
            "name": name, "plugin": model.plugin,
            "package": f"{dist[0]} {dist[1]}" if dist else None,
            "description": model.description, f"parameters_at_ed{ed}": count,
            "params": [{"name": p.name, "type": p.type.__name__, "default": p.default,
                        "help": p.help, "choices": list(p.choices) if p.choices else None,
                        "minimum": p.minimum, "maximum": p.maximum}
                       for p in model.params],
        })
    return rows


# The course autoencoder and loading checkpoints into it (was aetool.models).

class Autoencoder(nn.Module):
    """28x28 image -> `encoding_dim` numbers -> 28x28 image in [0, 1]."""

    def __init__(self, encoding_dim: int = 4) -> None:
        super().__init__()
        if encoding_dim < 1:
            raise AetoolError(f"The encoding dimension must be at least 1, got {encoding_dim}.")
        self.encoding_dim = encoding_dim
        self.encoder_cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),  # 28 -> 14
            nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 14 -> 7
            nn.ReLU(True),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),  # 7 -> 3
            nn.ReLU(True),
        )
        self.encoder_lin = nn.Sequential(
            nn.Linear(3 * 3 * 32, 64),
            nn.ReLU(True),
            nn.Linear(64, encoding_dim),
        )
        self.decoder_lin = nn.Sequential(
            nn.Linear(encoding_dim, 64),
            nn.ReLU(True),
            nn.Linear(64, 3 * 3 * 32),
            nn.ReLU(True),
        )
        self.decoder_conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0),  # 3 -> 7
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),  # 7 -> 14
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),  # 14 -> 28
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 1, 28, 28) -> codes (N, encoding_dim)."""
        return self.encoder_lin(self.encoder_cnn(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, encoding_dim) -> images (N, 1, 28, 28) in [0, 1]."""
        return torch.sigmoid(self.decoder_conv(self.decoder_lin(z).view(-1, 32, 3, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))




def encoding_dim_of(state_dict: dict[str, torch.Tensor]) -> int:
    """Read the encoding dimension off a state_dict (the last encoder layer's output size)."""
    try:
        return int(state_dict["encoder_lin.2.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        raise AetoolError("This state_dict is not an aetool/course autoencoder.") from None


def load_state_dict_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (`weights_only=True`), accepting a bare state_dict or a run's."""
    path = Path(path)
    obj = load_torch(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise AetoolError(f"Checkpoint {path} does not hold a model state_dict.")
    return obj


def load_model(
    path: Path | str, encoding_dim: int | None = None, device: torch.device | str = "cpu",
    *, model: str | None = None,
) -> nn.Module:
    """The one checkpoint loader: the model `model` (a spec; None is the course autoencoder)
    with the weights of checkpoint `path`, on `device`, in eval mode. Every command, `Run.model`
    and the seed checkpoints load through it.

    The file is read safely (`torch.load(weights_only=True)`; a bare state_dict or a run's
    resume state). `encoding_dim` is read off the file when not given (the course model's
    only). A checkpoint of another model or ED (checked before the model is built, so a damaged
    file never makes a huge one) or with weights that are not finite is one sentence naming the
    file (`AetoolError`); a `SettingError` when the spec cannot be built here."""
    state = load_state_dict_file(path)
    if encoding_dim is None:
        if parse_model_spec(model).model.name != DEFAULT_MODEL:
            raise AetoolError(f"Give the encoding dimension to load {path} as a {model!r} "
                              "model; only the course model's is read off its checkpoint.")
        encoding_dim = encoding_dim_of(state)
    _check_state(state, model, encoding_dim, path)
    wanted = f"a {model or DEFAULT_MODEL!r} model with encoding dimension {encoding_dim}"
    module = build_model(model, encoding_dim)
    try:
        module.load_state_dict(state)
    except Exception:  # noqa: BLE001 - any mismatch PyTorch finds, in any words
        raise AetoolError(f"{path} does not hold the weights of {wanted}.") from None
    return module.to(device).eval()


def _check_state(state: dict[str, torch.Tensor], spec: str | None, ed: int,
                 path: Path | str) -> None:
    """Refuse a checkpoint that is not the model `spec` at `ed`: a whole checkpoint of another
    encoding dimension says so; other keys, shapes or kinds of number name the first one that
    differs; NaN or infinite weights are refused (`check_finite`)."""
    expected = expected_state(spec, ed)
    problem = state_mismatch(state, expected) if expected is not None else None
    if problem is not None:
        try:
            found = encoding_dim_of(state)
        except AetoolError:
            found = ed
        other = expected_state(spec, found) if found != ed else None
        if other is not None and state_mismatch(state, other) is None:
            raise AetoolError(f"Checkpoint {path} has encoding dimension {found}, not {ed}.")
        raise AetoolError(f"{path} does not hold the weights of a {spec or DEFAULT_MODEL!r} "
                          f"model with encoding dimension {ed} ({problem}).")
    check_finite(state, path)
