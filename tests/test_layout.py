"""The project's layout: no import cycles, no private names reached across modules.

Read from the source (ast), so it needs no server, database or Django set-up. Every import
counts, at module level or inside a function, except under `if TYPE_CHECKING:` (those are
for the type checker only and never run). The project's modules are those under vms/ and
portal/. A cycle is broken by moving the shared piece to a module both sides can import;
a private name (`_x`) wanted by another module is made public under a name that says what
it is. docs/architecture.md says which package holds what.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vms", "portal")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)
    # (line, "from X import _y" or "X._y") for every private name reached in another module
    private: list[tuple[int, str]] = field(default_factory=list)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def project_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, is_package = _module_name(path)
            modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_running_code(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below `node`, leaving out the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk_running_code(other)
            continue
        yield child
        yield from _walk_running_code(child)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_relative(module: Module, level: int, target: str | None) -> str:
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def analyse(modules: dict[str, Module]) -> None:
    """Fill each module's imports (project modules only) and its private reaches."""
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        # local name -> project module it is bound to (for `alias._x` attribute access)
        bound: dict[str, str] = {}
        nodes = list(_walk_running_code(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        module.imports.add(alias.name)
                        if alias.asname:
                            bound[alias.asname] = alias.name
                    elif alias.name.split(".")[0] in PACKAGES:
                        raise AssertionError(f"{module.name}: no module {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                source = (
                    _resolve_relative(module, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                if source.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        module.imports.add(submodule)
                        bound[alias.asname or alias.name] = submodule
                        target = submodule
                    elif source in modules:
                        module.imports.add(source)
                        target = source
                    else:
                        raise AssertionError(f"{module.name}: no module {source}")
                    if _is_private(alias.name) and target != module.name:
                        module.private.append((node.lineno, f"from {source} import {alias.name}"))
        for node in nodes:
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and _is_private(node.attr)
                and bound[node.value.id] != module.name
            ):
                module.private.append((node.lineno, f"{bound[node.value.id]}.{node.attr}"))
        module.imports.discard(module.name)


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in sorted(modules[name].imports):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return cycles


def _analysed() -> dict[str, Module]:
    modules = project_modules()
    analyse(modules)
    return modules


def test_the_layout_reads_the_whole_project() -> None:
    modules = _analysed()
    assert len(modules) > 100
    # the analysis sees imports inside functions too, and none under TYPE_CHECKING
    assert "vms.services.core.queue" in modules["vms.services.desktops.requests"].imports
    assert "vms.models" in modules["vms.tasks"].imports


def test_no_import_cycles() -> None:
    cycles = import_cycles(_analysed())
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_across_modules() -> None:
    found = [
        f"{module.path.relative_to(ROOT)}:{line}: {what}"
        for module in _analysed().values()
        for line, what in module.private
    ]
    assert found == [], "private names reached from another module:\n" + "\n".join(found)


def _fixture(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = list(Path(relative).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), path, is_package)
    analyse(modules)
    return modules


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    modules = _fixture(
        tmp_path,
        {
            "vms/__init__.py": "",
            "vms/a.py": "def f():\n    from vms.b import _helper\n",
            "vms/b.py": "from . import c\n",
            "vms/c.py": "import vms.a as a\n\ndef g():\n    return a._secret\n",
            "vms/d.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from vms.e import _only_typed\n"
            ),
            "vms/e.py": "from vms import d\n",
        },
    )
    assert import_cycles(modules) == [["vms.a", "vms.b", "vms.c"]]
    assert modules["vms.a"].private == [(2, "from vms.b import _helper")]
    assert modules["vms.c"].private == [(4, "vms.a._secret")]
    assert modules["vms.d"].imports == set()
    assert modules["vms.d"].private == []
