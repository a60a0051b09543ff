"""The data set plugin guide cannot drift from the code: docs/plugins.md's "Writing a
data set plugin" has a heading with the hook's exact signature, lists the fields of `Dataset` and
`DatasetArrays` as the code has them, and its minimal plugin works as printed."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types

import torch
from conftest import ROOT

from aetool import plugins
from aetool.data import load_dataset
from aetool.data.registry import Dataset, DatasetArrays, registered_datasets
from aetool.plugins import hookspecs

README = ROOT / "docs" / "plugins.md"


def section() -> str:
    text = README.read_text()
    start = text.find("## Writing a data set plugin")
    assert start >= 0, "docs/plugins.md has no 'Writing a data set plugin' section"
    end = text.find("\n## ", start)
    return text[start:end]


def paragraph() -> str:
    text = section()
    start = text.index("A `Dataset` (from `aetool.data.registry`) has")
    return " ".join(text[start : text.index("\n\n", start)].split())


def test_the_hook_has_a_heading_with_its_exact_signature_and_its_docstring():
    hook = hookspecs.register_datasets
    headings = re.findall(r"^#+ +(.+?) *$", section(), flags=re.MULTILINE)
    assert f"register_datasets{inspect.signature(hook)}" in headings
    assert inspect.getdoc(hook) in section()


def test_every_dataset_field_a_plugin_sets_is_documented_as_required_or_optional():
    text = paragraph()
    fields = {f.name: f for f in dataclasses.fields(Dataset) if f.name != "plugin"}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    optional = [n for n in fields if n not in required]
    has, _, rest = text.partition("; optional are")
    for name in required:
        assert re.search(rf"`{name}[`(]", has), name
    for name in optional:
        assert re.search(rf"`{name}[`(]", rest), name
    assert "`load(root, progress) -> DatasetArrays`" in text
    assert "`present(root) -> bool`" in text


def test_dataset_arrays_is_documented_with_its_exact_signature():
    written = re.search(r"`DatasetArrays\(([^)]*)\)`", paragraph()).group(1)
    code = ", ".join(
        p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
        for p in inspect.signature(DatasetArrays).parameters.values())
    assert written == code


def test_the_readme_example_plugin_works(tmp_path):
    source = re.search(r"```python\n(.*?)```", section(), flags=re.DOTALL).group(1)
    module = types.ModuleType("aetool_readme_stripes")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)
    plugins.load_plugins()
    plugins.pm.register(module, name="readme-stripes")
    try:
        assert registered_datasets()["stripes"].plugin == "readme-stripes"
        loaded = load_dataset("stripes", tmp_path)
        assert loaded.train_images.shape == (1000, 1, 28, 28)
        assert loaded.classes[0] == "every 2" and loaded.test_labels.dtype == torch.int64
        first = loaded.train_images[0, 0, 0]
        k = int(loaded.train_labels[0]) + 2
        assert first[::k].eq(255).all() and int(first.sum()) == 255 * len(range(0, 28, k))
    finally:
        plugins.pm.unregister(module)
