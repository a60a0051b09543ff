"""The plugin docs cannot drift from the code: every hook in `aetool.hookspecs` has a README
heading with its exact signature, and the README's minimal plugin works as printed."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest
import torch

from aetool import hookspecs, plugins
from aetool.noises import build_noise, registered_noises

README = Path(__file__).resolve().parents[1] / "README.md"


def hook_specs() -> list[types.FunctionType]:
    return [
        value for _, value in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(value, "aetool_spec")
    ]


def plugin_section() -> str:
    text = README.read_text()
    start = text.find("Writing a noise plugin")
    assert start >= 0, "README.md has no 'Writing a noise plugin' section"
    return text[start:]


def test_there_are_hooks():
    assert [hook.__name__ for hook in hook_specs()] == ["register_noises"]


@pytest.mark.parametrize("hook", hook_specs(), ids=lambda hook: hook.__name__)
def test_every_hook_is_documented_with_its_exact_signature(hook):
    section = plugin_section()
    heading = f"{hook.__name__}{inspect.signature(hook)}"
    headings = re.findall(r"^#+ +(.+?) *$", section, flags=re.MULTILINE)
    assert heading in headings, f"README.md needs a heading '{heading}' under the plugin docs"
    summary = inspect.getdoc(hook).splitlines()[0]
    assert summary in section, f"README.md should describe {hook.__name__}: {summary!r}"


def test_hooks_have_one_line_docstrings():
    for hook in hook_specs():
        assert inspect.getdoc(hook) and len(inspect.getdoc(hook).splitlines()) == 1


def test_the_readme_example_plugin_works():
    blocks = re.findall(r"```python\n(.*?)```", plugin_section(), flags=re.DOTALL)
    source = next(block for block in blocks if "@hookimpl" in block)
    module = types.ModuleType("aetool_readme_example")
    exec(compile(source, "README.md", "exec"), module.__dict__)
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
