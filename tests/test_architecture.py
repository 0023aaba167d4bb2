"""The package's shape, checked on its source (docs/architecture.md says why it matters):

- no import cycles between engine modules, function-level imports included;
- each subpackage imports only the floors its docstring allows;
- ``Checkpointer`` derives from ``object`` alone and hands neither itself nor callbacks
  (lambdas, its own bound methods) to the objects it drives.
"""
from __future__ import annotations

import ast
import os

import pytest

ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
KERNELS = os.path.join(os.path.dirname(ENGINE), "kernels")


def _modules() -> dict[str, str]:
    """Dotted module name (``tierpoint.format.layout``) -> source file."""
    found = {}
    for top, prefix in ((ENGINE, "tierpoint"), (KERNELS, "tierpoint.kernels")):
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
            rel = os.path.relpath(folder, top)
            parts = [] if rel == "." else rel.split(os.sep)
            for name in files:
                if name.endswith(".py"):
                    stem = name[:-3]
                    dotted = ".".join([prefix, *parts] + ([] if stem == "__init__" else [stem]))
                    found[dotted] = os.path.join(folder, name)
    return found


MODULES = _modules()


def _package_of(module: str, path: str) -> str:
    return module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]


def imports_of(module: str) -> set[str]:
    """Every engine module ``module`` imports, wherever the import statement stands."""
    path = MODULES[module]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path).split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != module:
                out.add(target)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """The import graph's cycles (one per strongly connected component, Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    assert _cycles() == []


# What each part may import (besides itself, errors, options, version and kernels): the floors
# of docs/architecture.md, from the bottom up.
ALLOWED = {
    "runtime": set(),
    "format": {"runtime"},
    "tiers": {"runtime", "format"},
    "save": {"runtime", "format", "tiers", "state"},
    "restore": {"runtime", "format", "tiers", "state"},
    "view": {"runtime", "format", "tiers", "restore"},
    "trust": {"runtime", "format", "tiers", "restore", "view"},
    "api": {"runtime", "format", "tiers", "save", "restore", "trust", "state"},
    "dcp": {"runtime", "format", "tiers", "restore", "view", "state"},
    "hf": {"runtime", "format", "tiers", "save", "restore", "trust", "api", "state", "view",
           "dcp"},
    "cli": {"runtime", "format", "tiers", "save", "restore", "trust", "api", "state", "view",
            "hf"},
}
ANYWHERE = {"errors", "options", "version", "kernels"}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_the_floors_below_it(part):
    wrong = sorted((m, t) for m in GRAPH if _part(m) == part for t in GRAPH[m]
                   if _part(t) != part and _part(t) not in ALLOWED[part] | ANYWHERE)
    assert wrong == []


def test_every_subpackage_says_what_it_owns_and_may_import():
    for module, path in MODULES.items():
        if path.endswith("__init__.py") and module.count(".") == 1 and \
                not module.endswith("kernels"):
            doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))
            assert doc and "import" in doc, module


def _checkpointer() -> ast.ClassDef:
    tree = ast.parse(open(MODULES["tierpoint.api"], encoding="utf-8").read())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Checkpointer")


def test_checkpointer_has_no_base_classes_but_object():
    import tierpoint
    assert tierpoint.Checkpointer.__bases__ == (object,)
    assert _checkpointer().bases == []


def test_checkpointer_passes_neither_itself_nor_callbacks_to_what_it_drives():
    cls = _checkpointer()
    methods = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []
    for node in ast.walk(cls):
        if isinstance(node, ast.Lambda):
            found.append(f"a lambda on line {node.lineno}")
        if isinstance(node, ast.Call):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Name) and arg.id == "self":
                    found.append(f"self passed on line {node.lineno}")
                if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and \
                        arg.value.id == "self" and arg.attr in methods:
                    found.append(f"self.{arg.attr} passed on line {node.lineno}")
    # weakref.ref(self) for the at-exit hook is the one reference that is not a callback
    # into the Checkpointer's state: it lets an exiting interpreter finish a save.
    found = [f for f in found if f != "self passed on line {}".format(_weakref_line(cls))]
    assert found == []


def _weakref_line(cls: ast.ClassDef) -> int:
    for node in ast.walk(cls):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "ref" and isinstance(node.func.value, ast.Name) and \
                node.func.value.id == "weakref":
            return node.lineno
    return -1


def test_the_import_paths_of_the_flat_layout_still_work():
    """Code written against tierpoint 0.1's flat modules keeps importing the same objects."""
    import importlib

    import tierpoint
    for old, new in {"distenv": "runtime.distenv", "verify": "trust.verify",
                     "inspect": "trust.inspect", "lineage": "trust.lineage",
                     "audit": "trust.audit"}.items():
        assert importlib.import_module(f"tierpoint.{old}") is \
            importlib.import_module(f"tierpoint.{new}")
        assert getattr(tierpoint, old) is importlib.import_module(f"tierpoint.{new}")
    from tierpoint.distenv import init_torch_distributed
    from tierpoint.verify import verify_checkpoint
    assert init_torch_distributed is tierpoint.runtime.distenv.init_torch_distributed
    assert verify_checkpoint is tierpoint.trust.verify.verify_checkpoint
