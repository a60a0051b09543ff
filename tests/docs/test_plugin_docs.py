"""The plugin docs cannot drift from the code: every hook in `aetool.plugins.hookspecs` has a
heading in docs/plugins.md with its exact signature, the fields of `Noise` and `NoiseParam` and the
random-number helpers are listed as the code has them, and the guide's minimal plugin works as
printed."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types

import pytest
import torch
from conftest import ROOT

from aetool import noises, plugins
from aetool.noises import Noise, NoiseParam, build_noise, registered_noises
from aetool.plugins import hookspecs

README = ROOT / "docs" / "plugins.md"


def hook_specs() -> list[types.FunctionType]:
    return [
        value for _, value in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(value, "aetool_spec")
    ]


def plugin_section() -> str:
    text = README.read_text()
    start = text.find("Writing a noise plugin")
    assert start >= 0, "docs/plugins.md has no 'Writing a noise plugin' section"
    return text[start:]


def test_there_are_hooks():
    names = [hook.__name__ for hook in hook_specs()]
    assert {"register_noises", "register_datasets"} <= set(names)


@pytest.mark.parametrize("hook", hook_specs(), ids=lambda hook: hook.__name__)
def test_every_hook_is_documented_with_its_exact_signature(hook):
    section = plugin_section()
    heading = f"{hook.__name__}{inspect.signature(hook)}"
    headings = re.findall(r"^#+ +(.+?) *$", section, flags=re.MULTILINE)
    assert heading in headings, f"docs/plugins.md needs a heading '{heading}' under the plugin docs"
    summary = inspect.getdoc(hook).splitlines()[0]
    assert summary in section, f"docs/plugins.md should describe {hook.__name__}: {summary!r}"


def test_hooks_have_one_line_docstrings():
    for hook in hook_specs():
        assert inspect.getdoc(hook) and len(inspect.getdoc(hook).splitlines()) == 1


def test_the_readme_example_plugin_works():
    blocks = re.findall(r"```python\n(.*?)```", plugin_section(), flags=re.DOTALL)
    source = next(block for block in blocks if "@hookimpl" in block)
    module = types.ModuleType("aetool_readme_example")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)
    plugins.load_plugins()
    plugins.pm.register(module, name="readme-example")
    try:
        noise = registered_noises()["flip"]
        assert noise.plugin == "readme-example"
        x = torch.rand(4, 1, 28, 28)
        flip = build_noise("flip:p=0.5")
        out = flip(x, torch.Generator().manual_seed(0))
        assert torch.equal(out, flip(x, torch.Generator().manual_seed(0)))
        changed = (out != x).float().mean().item()
        assert 0.4 < changed < 0.6
    finally:
        plugins.pm.unregister(module)


# --------------------------------------------------------------------------- fields and helpers


def noise_paragraph() -> str:
    """The README's paragraph on what a `Noise` is, on one line."""
    section = plugin_section()
    start = section.index("A `Noise` (from `aetool.noises`) has")
    return " ".join(section[start : section.index("\n\n", start)].split())


def documented_calls(text: str) -> dict[str, list[str]]:
    """`name(a, b=None, **c)` written in backticks: name -> its arguments as written."""
    calls = re.findall(r"`(?:aetool\.noises\.)?(\w+)\(([^)]*)\)(?: -> \w+)?`", text)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in calls}


def as_written(parameter: inspect.Parameter) -> str:
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{parameter.name}"
    if parameter.default is inspect.Parameter.empty:
        return parameter.name
    return f"{parameter.name}={parameter.default!r}"


def test_noise_param_is_documented_with_its_exact_fields():
    documented = documented_calls(noise_paragraph())["NoiseParam"]
    fields = dataclasses.fields(NoiseParam)
    # names and order: plugins pass the first four positionally, as the README's example does
    assert [a.split("=")[0] for a in documented] == [f.name for f in fields]
    for written, field in zip(documented, fields, strict=True):
        if "=" in written:
            assert field.default == eval(written.split("=")[1]), field.name
    types_listed = re.search(r"with `type` one of ((?:`\w+`,? ?)+)", noise_paragraph()).group(1)
    assert re.findall(r"`(\w+)`", types_listed) == [t.__name__ for t in noises.PARAM_TYPES]


# Where README.md and the code part (none today): any difference fails.
KNOWN_NOISE_PARAM_GAPS: list[tuple[str, str]] = []
KNOWN_UNDOCUMENTED_NOISE_FIELDS: list[str] = []


def test_noise_param_defaults_are_all_documented():
    documented = documented_calls(noise_paragraph())["NoiseParam"]
    code = [as_written(p) for p in inspect.signature(NoiseParam).parameters.values()]
    assert len(documented) == len(code)
    gaps = [(d, c) for d, c in zip(documented, code, strict=True) if d != c]
    assert gaps == KNOWN_NOISE_PARAM_GAPS


def plugin_fields() -> list[dataclasses.Field]:
    """The fields of `Noise` a plugin fills in (`plugin` is set by the registry)."""
    return [f for f in dataclasses.fields(Noise) if f.name != "plugin"]


def documented_noise_fields() -> list[str]:
    """Backticked names in the paragraph that are fields of `Noise`, in order of mention."""
    names = {f.name for f in dataclasses.fields(Noise)}
    mentioned = re.findall(r"`(\w+)", noise_paragraph().split("NoiseParam(")[0])
    mentioned += re.findall(r"An optional `(\w+)", noise_paragraph())
    return list(dict.fromkeys(m for m in mentioned if m in names))


def test_every_documented_noise_field_is_one_and_is_required_as_documented():
    documented = documented_noise_fields()
    assert documented == ["name", "description", "apply", "params", "label", "validate"]
    fields = {f.name: f for f in dataclasses.fields(Noise)}
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert required == {"name", "description", "apply"}  # the README's "has a ..."
    assert fields["params"].default == () and fields["label"].default is None  # optional
    assert fields["validate"].default is None
    calls = documented_calls(noise_paragraph())
    assert calls["apply"] == ["x", "generator", "**params"]
    assert calls["label"] == ["**params"]
    assert calls["validate"] == ["**params"]


def test_every_noise_field_a_plugin_can_set_is_documented():
    documented = documented_noise_fields()
    undocumented = [f.name for f in plugin_fields() if f.name not in documented]
    assert undocumented == KNOWN_UNDOCUMENTED_NOISE_FIELDS


@pytest.mark.parametrize("helper", ["rand_like", "randn_like", "randint_for"])
def test_random_helpers_have_the_documented_signatures(helper):
    documented = documented_calls(noise_paragraph())[helper]
    code = [as_written(p) for p in inspect.signature(getattr(noises, helper)).parameters.values()]
    assert documented == code
    assert helper in noises.__dict__ and not helper.startswith("_")


def test_the_helpers_draw_on_the_generator_s_device_and_return_on_x_s():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for drawn in (noises.rand_like(x, generator), noises.randn_like(x, generator)):
        assert drawn.shape == x.shape and drawn.dtype == x.dtype and drawn.device == x.device
    ints = noises.randint_for(x, 0, 14, (2, 2), generator)
    assert ints.shape == (2, 2) and int(ints.min()) >= 0 and int(ints.max()) < 14
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(noises.randint_for(x, 0, 14, (5,), g1),
                       noises.randint_for(x, 0, 14, (5,), g2))


def test_the_plugin_api_the_readme_names_exists():
    section = " ".join(plugin_section().split())
    assert "`aetool.plugins.pm.register(obj, name=...)`" in section
    assert inspect.signature(plugins.pm.register).parameters.keys() >= {"plugin", "name"}
    assert f"`{plugins.NO_ENTRYPOINTS_ENV}=1`" in section
    assert f"`{plugins.ENTRY_POINT_GROUP}` [entry point group]" in section
    pyproject = re.search(r"```toml\n(.*?)```", plugin_section(), flags=re.DOTALL).group(1)
    assert f"[project.entry-points.{plugins.ENTRY_POINT_GROUP}]" in pyproject
