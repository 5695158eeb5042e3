"""The package's house rules, read from the source files.

Every import statement counts, function-level ones included (a lazy import that
dodges a cycle is still a cycle). Sub-packages form layers that import only
downward, modules form no cycle, and no module exceeds the size a reader can hold.
"""
import ast
import pathlib
from collections import defaultdict

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'igq_plugin'

# Bottom-up: a layer imports only itself and the layers before it. ``api`` is the
# package root (``igq_plugin/__init__.py``, ``calibration.py``): the job lives there.
LAYERS = ('quant', 'grouping', 'quantizers', 'nn', 'adapters', 'integer', 'export', 'search',
          'report', 'api', 'mm')
MAX_MODULE_LINES = 400


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split('.'))
    return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every ``igq_plugin`` module that ``path`` imports, at any nesting level."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split('.')[0] == 'igq_plugin')
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            if target.split('.')[0] != 'igq_plugin':
                continue
            for alias in node.names:  # ``from . import adapters`` names a module
                child = f'{target}.{alias.name}'
                found.add(child if is_module(child) else target)
    found.discard(name)
    return found


def module_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob('*.py'))}


def layer(module: str) -> str:
    parts = module.split('.')
    if len(parts) == 1 or is_module(module) and not (PACKAGE / parts[1]).is_dir():
        return 'api'
    return parts[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_every_import():
    graph = module_graph()
    assert 'igq_plugin.quant.primitives' in graph['igq_plugin.grouping.bounds']
    assert 'igq_plugin.adapters' in graph['igq_plugin']  # `from . import adapters`
    assert len(graph) > 40


def test_modules_form_no_cycle():
    assert cycles(module_graph()) == []


def test_sub_packages_import_only_downward():
    for layer_name in {layer(m) for m in module_graph()}:
        assert layer_name in LAYERS, f'{layer_name}: add the new sub-package to LAYERS'
    upward = sorted(
        f'{source} -> {target}'
        for source, targets in module_graph().items() for target in targets
        if LAYERS.index(layer(target)) > LAYERS.index(layer(source)))
    assert upward == []


def test_sub_packages_form_no_cycle():
    graph = defaultdict(set)
    for source, targets in module_graph().items():
        graph[layer(source)].update(layer(t) for t in targets if layer(t) != layer(source))
    assert cycles(graph) == []


def test_cycle_finder_finds_lazy_cycles():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_process_wide_machine_tuning():
    """A library imported into someone else's job must not reach into the C runtime
    (e.g. glibc's allocator through ctypes)."""
    offenders = []
    for path in PACKAGE.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f'{module_name(path)}: {n}' for n in names
                          if n.split('.')[0] in ('ctypes', 'cffi')]
    assert offenders == []


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: module_name(p))
def test_module_is_small(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
