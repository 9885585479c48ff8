"""No import circles: every module of `della` and `metrics` imports on its own, first, in a fresh
interpreter (one subprocess that forgets both packages before each import)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

IMPORT_EACH = r"""
import importlib, pkgutil, sys, traceback

def modules(package):
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    return [n for n in names if not n.endswith(".__main__")]  # __main__ runs the CLI

packages = sys.argv[1:]
names = [name for package in packages for name in modules(package)]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(f"{name}:\n{traceback.format_exc(limit=-3)}")
print(len(names), "modules")
print("\n".join(failed))
sys.exit(1 if failed else 0)
"""


def import_each(*packages: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", IMPORT_EACH, *packages], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_every_module_imports_alone():
    proc = import_each("della", "metrics")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert int(proc.stdout.split()[0]) > 30  # the walk found the packages' modules


def test_a_circle_is_caught(tmp_path):
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "b.py").write_text("from circle.c import C\nB = 1\n")
    (package / "c.py").write_text("from circle.b import B\nC = 2\n")
    proc = import_each("circle", cwd=tmp_path)
    assert proc.returncode == 1 and "circle.b:" in proc.stdout and "partially initialized" in proc.stdout
