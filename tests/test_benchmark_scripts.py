"""Every script under benchmarks/ still imports against the library (they run only by hand or on a lent GPU,
so nothing else would notice a name they use going away)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their siblings, as when run from there
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(script).stem}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # the scripts run their work under `if __name__ == "__main__"` only
    if '__name__ == "__main__"' in (BENCHMARKS / script).read_text():  # a script, not a helper module of one
        assert callable(getattr(module, "main", None)), f"{script} has no main()"
