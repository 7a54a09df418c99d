"""The layout the design card names (DEVELOPERS.md, issue 28): dependencies point one way,
scripts -> entry points -> packages, and the entry points stay wiring."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('benchmark', 'dafa', 'data', 'engine', 'evaluation', 'fairness', 'losses', 'models')
ENTRY_POINTS = {'train', 'eval'} | {os.path.basename(p)[:-3]
                                    for p in glob.glob(os.path.join(ROOT, 'scripts', '*.py'))}


def _imported(path: str) -> set:
    """The top-level module names a file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_no_package_imports_an_entry_point_or_a_script():
    offenders = {}
    for package in PACKAGES:
        for path in glob.glob(os.path.join(ROOT, package, '**', '*.py'), recursive=True):
            bad = _imported(path) & ENTRY_POINTS
            if bad:
                offenders[os.path.relpath(path, ROOT)] = sorted(bad)
    assert not offenders


def test_the_entry_points_are_wiring():
    for name in ('train.py', 'eval.py'):
        source = open(os.path.join(ROOT, name)).read()
        assert len(source.splitlines()) <= 300, name
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, (name, node.name)
    assert len(open(os.path.join(ROOT, 'scripts', 'reproduce.py')).read().splitlines()) <= 150
