"""The package's layering, read from the source with ``ast``: no import cycle inside ``qmri_jax``
(imports inside functions included), an engine that imports no task, model or diffusion code, no
branching on ``config.task`` outside ``qmri_jax/tasks``, and tests that use public names only."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PKG = REPO / "qmri_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split("."))
    return (REPO / rel.with_suffix(".py")).is_file() or (REPO / rel / "__init__.py").is_file()


def _imports(path: pathlib.Path):
    """Every qmri_jax module ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("qmri_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("qmri_jax"):
            for a in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{node.module}.{a.name}"
                out.add(sub if _is_module(sub) else node.module)
    return out


def import_graph(root=PKG) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(root.rglob("*.py"))}


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n == m or n not in graph:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_qmri_jax():
    graph = import_graph()
    assert "qmri_jax.tasks.ddpm" in graph and "qmri_jax.engine.loop" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_engine_imports_no_task_model_or_diffusion_module():
    forbidden = ("qmri_jax.tasks", "qmri_jax.models", "qmri_jax.diffusion", "qmri_jax.train",
                 "qmri_jax.predict", "qmri_jax.losses")
    for mod, deps in import_graph(PKG / "engine").items():
        bad = sorted(d for d in deps if d.startswith(forbidden))
        assert not bad, f"{mod} imports {bad}"


def test_physics_imports_nothing_above_it():
    for mod, deps in import_graph(PKG / "physics").items():
        bad = sorted(d for d in deps if not d.startswith("qmri_jax.physics"))
        assert not bad, f"{mod} imports {bad}"


_TASK_BRANCH = re.compile(r"""(config|cfg)\.(task|get\(["']task["'].*?\))\s*[!=]=""")


@pytest.mark.parametrize("folder", ["qmri_jax", "experiments", "bench", "tests"])
def test_no_branch_on_the_task_type_outside_the_tasks(folder):
    hits = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if (PKG / "tasks") in path.parents or path == pathlib.Path(__file__):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _TASK_BRANCH.search(line):
                hits.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_tests_use_no_private_helper_of_another_module():
    hits = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if a.name.startswith("_"):
                        hits.append(f"{path.name}: from {node.module} import {a.name}")
                    elif _is_module(f"{node.module}.{a.name}"):
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {(a.asname or a.name).split(".")[0] for a in node.names
                            if a.name.startswith(("qmri_jax", "experiments", "configs"))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                hits.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not hits, "\n".join(hits)


def test_no_library_file_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
