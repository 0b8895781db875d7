"""The package's layout is its architecture: subpackages in one dependency order, no import
cycles, no upward imports, a pure core, and docs that name the subpackages that exist.

The checks read the source with ``ast`` (nothing is imported, so torch and rclpy are not
loaded) and count every import, lazy ones inside functions too: a lazy upward import is still
an upward dependency. The checker itself is tested on small packages built in ``tmp_path``, so
these tests are known to fail when the rule is broken.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "kuavo_smolvla_ros"
# Bottom to top: a module may import from its own subpackage or from those before it.
LAYERS = ("core", "runners", "ros", "bag", "replay", "training", "sim", "demo", "testing")
# Top-level packages a layer must never import, not even lazily.
FORBIDDEN = {
    "core": ("rclpy", "torch", "lerobot"),  # numpy only: the core runs anywhere
    "runners": ("rclpy",),  # the model side knows nothing of ROS
}


@dataclass
class Layout:
    """What the checker found; each list holds one readable line per problem."""

    modules: dict[str, set[str]] = field(default_factory=dict)  # module -> imported modules
    upward: list[str] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without ``if TYPE_CHECKING:`` bodies (annotations only, never run)."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            yield from (n for c in child.orelse for n in (c, *_walk(c)))
            continue
        yield child
        yield from _walk(child)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an ``import`` or ``from ... import`` in ``tree`` names, absolute; lazy
    imports inside functions count, imports for type checkers only do not."""
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)  # submodules, if they exist


def _layer(module: str, package: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == package and len(parts) > 1 else None


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_layout(root: Path, layers: tuple[str, ...] = LAYERS) -> Layout:
    """Read every module under the package directory ``root`` and check the rules."""
    package = root.name
    files = {_module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    found = Layout()
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        names = set(_imports(tree, module, path.name == "__init__.py"))
        own = {n for n in names if n in files and n != module}
        found.modules[module] = own
        layer = _layer(module, package)
        if layer is not None and layer not in layers:
            line = f"subpackage {layer!r} has no place in the layers"
            if line not in found.unplaced:
                found.unplaced.append(line)
            continue
        for bad in FORBIDDEN.get(layer or "", ()):
            hits = sorted(n for n in names if n == bad or n.startswith(bad + "."))
            if hits:
                found.forbidden.append(f"{module} imports {hits[0]} ({layer} must not)")
        if layer is None:
            continue  # the package's own __init__: the public API sits on top of everything
        for target in sorted(own):
            other = _layer(target, package)
            if other in layers and layers.index(other) > layers.index(layer):
                found.upward.append(f"{module} ({layer}) imports {target} ({other}, above it)")
    found.cycles = [" -> ".join(c) for c in _find_cycles(found.modules)]
    return found


def documented_subpackages(text: str, package: str = PACKAGE) -> set[str]:
    """Subpackage names in the ``package/`` tree block of a Markdown document."""
    block = re.search(rf"```[^\n]*\n{package}/\n(.*?)```", text, re.S)
    assert block, f"no ```{package}/ ...``` tree block in the document"
    return set(re.findall(r"^  ([a-z_]+)/", block.group(1), re.M))


# ---------------------------------------------------------------------------------------------
# The package itself.


@pytest.fixture(scope="module")
def layout() -> Layout:
    return check_layout(REPO / PACKAGE)


def test_every_subpackage_has_a_place_in_the_dependency_order(layout):
    assert layout.unplaced == []
    subpackages = {p.name for p in (REPO / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    assert subpackages <= set(LAYERS)


def test_no_module_imports_a_subpackage_above_its_own(layout):
    assert layout.upward == []


def test_there_are_no_import_cycles_between_modules(layout):
    assert layout.cycles == []


def test_the_core_imports_neither_rclpy_nor_torch_and_runners_no_rclpy(layout):
    assert layout.forbidden == []


def test_the_architecture_doc_names_exactly_the_subpackages_that_exist():
    subpackages = {p.name for p in (REPO / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert documented_subpackages(doc) == subpackages


def test_the_readme_layout_section_names_every_subpackage():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    subpackages = {p.name for p in (REPO / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    assert {s for s in subpackages if f"`{s}/`" not in section} == set()


# ---------------------------------------------------------------------------------------------
# The checker fails when it should (small packages written for the purpose).


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for sub in {Path(rel).parts[0] for rel in files if "/" in rel}:
        (root / sub / "__init__.py").touch()
    return root


def test_the_checker_finds_an_upward_import_even_inside_a_function(tmp_path):
    root = _package(
        tmp_path,
        {
            "core/config.py": "def f():\n    from pkg.replay import cli\n",
            "replay/cli.py": "from pkg.core import config\n",
        },
    )
    found = check_layout(root)
    assert "pkg.core.config (core) imports pkg.replay.cli (replay, above it)" in found.upward
    assert found.cycles == ["pkg.core.config -> pkg.replay.cli"]


def test_the_checker_ignores_imports_for_type_checkers_only(tmp_path):
    root = _package(
        tmp_path,
        {
            "core/a.py": "import typing\nif typing.TYPE_CHECKING:\n    import torch\n",
            "ros/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.ros.c import C\nelse:\n    from pkg.replay import d\n",
            "ros/c.py": "from pkg.ros.b import B\n",
            "replay/d.py": "",
        },
    )
    found = check_layout(root)
    assert (found.forbidden, found.cycles) == ([], [])
    assert "pkg.ros.b (ros) imports pkg.replay.d (replay, above it)" in found.upward  # else: runs


def test_the_checker_finds_a_cycle_inside_one_subpackage_through_relative_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "bag/reader.py": "from .writer import BagWriter\n",
            "bag/writer.py": "from . import salvage\n",
            "bag/salvage.py": "from pkg.bag.reader import open_bag\n",
        },
    )
    found = check_layout(root)
    assert found.upward == []
    assert found.cycles == ["pkg.bag.reader -> pkg.bag.salvage -> pkg.bag.writer"]


def test_the_checker_finds_torch_in_the_core_and_rclpy_in_the_runners(tmp_path):
    root = _package(
        tmp_path,
        {
            "core/dims.py": "import numpy\nimport torch.nn\n",
            "runners/eager.py": "import torch\nfrom rclpy.node import Node\n",
            "ros/node.py": "import rclpy\nimport torch\n",
        },
    )
    assert check_layout(root).forbidden == [
        "pkg.core.dims imports torch.nn (core must not)",
        "pkg.runners.eager imports rclpy.node (runners must not)",
    ]


def test_the_checker_finds_a_subpackage_outside_the_layers(tmp_path):
    root = _package(tmp_path, {"tools/x.py": "", "core/y.py": ""})
    assert check_layout(root).unplaced == ["subpackage 'tools' has no place in the layers"]


def test_a_clean_package_passes_every_check(tmp_path):
    root = _package(
        tmp_path,
        {
            "core/config.py": "import numpy\n",
            "runners/eager.py": "import torch\nfrom pkg.core import config\n",
            "replay/cli.py": "from pkg.runners.eager import x\nfrom ..core.config import y\n",
        },
    )
    found = check_layout(root)
    assert (found.upward, found.cycles, found.forbidden, found.unplaced) == ([], [], [], [])
    assert found.modules["pkg.replay.cli"] == {"pkg.runners.eager", "pkg.core.config"}


def test_the_doc_reader_lists_the_tree_blocks_subpackages():
    doc = f"text\n```\n{PACKAGE}/\n  core/   a\n          b\n  ros/    c\n```\n"
    assert documented_subpackages(doc) == {"core", "ros"}
