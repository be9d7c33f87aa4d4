"""The package's import graph: no cycle anywhere in mlm_jax, function-local imports included,
and the layers import one way (config -> data / masking / models -> hf -> training -> commands).

Read from the source with `ast`, so a cycle that only bites when a function runs is caught too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mlm_jax"

# Lower layers never import higher ones. Commands (the modules at the top of mlm_jax/, and each
# package's __main__ / command module) may import anything.
LAYERS = {
    "mlm_jax.cli": 0,
    "mlm_jax.files": 0,
    "mlm_jax.locks": 0,
    "mlm_jax.config": 0,
    "mlm_jax.data": 1,
    "mlm_jax.masking": 1,
    "mlm_jax.models": 1,
    "mlm_jax.hf": 2,
    "mlm_jax.training": 3,
    "mlm_jax.generation": 3,
    "mlm_jax.finetuning": 4,
    "mlm_jax.sweep": 4,
    "mlm_jax.estimate": 4,  # compiles the training step for hardware this machine lacks
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The mlm_jax modules `path` imports anywhere in its body (a `from pkg import name` that
    names a submodule counts as importing the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _layer(module: str) -> int | None:
    is_command = (
        module.count(".") == 1
        and module not in LAYERS
        or module.endswith((".__main__", ".command"))
    )
    if is_command:
        return None
    owners = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(owners, key=len)] if owners else None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_mlm_jax():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_layers_import_downwards():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if _layer(module) is not None
        and _layer(target) is not None
        and _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", ["mlm_jax.main", "mlm_jax.data.tokenizer.__main__"])
def test_commands_are_in_the_graph(module):
    assert module in import_graph()
