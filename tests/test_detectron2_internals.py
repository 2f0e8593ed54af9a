"""
The protected detectron2 / fvcore APIs gfl-d2 relies on
(``gfl_d2.detectron2_internals``) still exist with the parameters it uses: a
detectron2 release that changes one fails here, naming it.
"""

import importlib
import inspect

import pytest
import torch

from gfl_d2.detectron2_internals import PROTECTED_APIS, PROTECTED_GLOBALS, read_checkpoint_file


@pytest.mark.parametrize(
    "module, cls, attribute, params",
    PROTECTED_APIS,
    ids=[f"{c}.{a}" for _, c, a, _ in PROTECTED_APIS],
)
def test_protected_api_is_as_gfl_d2_uses_it(module, cls, attribute, params):
    owner = getattr(importlib.import_module(module), cls)
    name = f"{module}.{cls}.{attribute}"
    assert hasattr(owner, attribute), f"detectron2 changed {name}: it no longer exists"
    signature = tuple(inspect.signature(getattr(owner, attribute)).parameters)
    assert signature == params, f"detectron2 changed {name}: parameters {signature}, not {params}"


def test_read_checkpoint_file_reads_what_load_reads(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    state = {"model": {"w": torch.arange(3.0)}}
    torch.save(state, tmp_path / "c.pth")
    read = read_checkpoint_file(DetectionCheckpointer(torch.nn.Module()), str(tmp_path / "c.pth"))
    assert torch.equal(read["model"]["w"], state["model"]["w"])


@pytest.mark.parametrize(
    "module, name, readers", PROTECTED_GLOBALS, ids=[n for _, n, _ in PROTECTED_GLOBALS]
)
def test_protected_global_is_read_where_gfl_d2_rebinds_it(module, name, readers):
    owner = importlib.import_module(module)
    assert hasattr(owner, name), f"detectron2 changed {module}.{name}: it no longer exists"
    for reader in readers:
        function = owner
        for part in reader.split("."):
            function = getattr(function, part)
        assert name in function.__code__.co_names, (
            f"detectron2 changed {module}.{reader}: it no longer reads the global {name}"
        )
