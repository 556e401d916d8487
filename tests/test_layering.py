"""The package imports downwards only: no import cycle between ``lexico_chat`` modules (STYLE.md §15), and the
attention package loads without the GPU code or Triton."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lexico_chat"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The project modules an import statement names (``from a import b`` names ``a.b`` where that is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import lexico_chat.x.y` with y a name, not a module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (function-local imports included)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(_imported(node, name, is_package, known))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "lexico_chat.gpu.pursuit" in graph["lexico_chat.omp"]  # imported inside omp(), only on CUDA
    assert "lexico_chat.attention.triton_decode" in graph["lexico_chat.attention.dispatch"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_attention_and_gpu_stay_below_the_cache():
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith(("lexico_chat.attention", "lexico_chat.gpu", "lexico_chat.accel")):
            assert not {e for e in edges if e.startswith("lexico_chat.cache")}, module
        if module.startswith("lexico_chat.gpu"):
            assert "lexico_chat.omp" not in edges, module
    assert graph["lexico_chat.gpu"] == set()  # a docstring only
    assert graph["lexico_chat.attention.codes"] == set()  # imports nothing of the project


def test_attention_imports_without_gpu_code_or_triton():
    code = (
        "import lexico_chat.attention, sys; "
        "assert not any(m.startswith(('lexico_chat.gpu', 'lexico_chat.cache', 'triton')) for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('lexico_chat', 'triton')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
