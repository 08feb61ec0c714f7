"""The scripts under scripts/ import against the current package (they are not run here: the benchmarks' timings
belong to `make bench`, the analyses to documented runs)."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", ["bench_train", "bench_extract", "bench_plan", "classifier_reference",
                                  "reward_features"])
def test_script_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # bench_extract imports bench_train's helpers
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert callable(module.main)
