"""The engine's rooms import downwards only, and nothing in the CLI above them.

`gemma_cli/engine/` is in layers (README, Development): each folder may import its own modules
and the folders listed before it, never one after it; the engine imports nothing from
`gemma_cli` but `config` and `errors`. Imports inside functions count: a function-level
import is still a dependency, only a deferred one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "gemma_cli"
LAYERS = ["core", "rewards", "families", "objectives", "patches", "model", "data", "plan", "sample", "evaluate", "train", "formats"]
ALLOWED_ABOVE = {"gemma_cli.config", "gemma_cli.errors"}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(ln, m) for ln, m in out if m == "gemma_cli" or m.startswith("gemma_cli.")]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 3 or parts[1] != "engine":
        return None
    return LAYERS.index(parts[2]) if parts[2] in LAYERS else None


def test_every_engine_folder_is_a_layer():
    folders = {p.name for p in (ROOT / "engine").iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders == set(LAYERS)
    assert sorted(p.name for p in (ROOT / "engine").glob("*.py")) == ["__init__.py"]


def test_engine_imports_point_down():
    bad = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        me = ".".join(rel.parts)
        mine = _layer(me)
        for line, mod in _imports(path):
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if mod.startswith("gemma_cli.engine"):
                theirs = _layer(mod)
                if mine is not None and theirs is not None and theirs > mine:
                    bad.append(f"{where}: {LAYERS[mine]} imports {mod} (layer {LAYERS[theirs]} is above it)")
            elif mod != "gemma_cli" and not any(mod == a or mod.startswith(a + ".") for a in ALLOWED_ABOVE):
                bad.append(f"{where}: the engine imports {mod} from the CLI above it")
    assert bad == []


def test_the_layer_test_sees_a_violation(tmp_path):
    """The checker itself: an upward import in a lower room is reported."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from gemma_cli.engine.train import trainer\n    from gemma_cli import preflight\n")
    mods = [m for _, m in _imports(f)]
    assert "gemma_cli.engine.train.trainer" in mods and "gemma_cli.preflight" in mods
    assert _layer("gemma_cli.engine.train.trainer") > _layer("gemma_cli.engine.model.load")


def test_every_gemma_cli_import_resolves():
    """Every `from gemma_cli.X import Y` in the package, tests and benchmarks names a module or an
    attribute that exists: a moved module is found here, not by the one CLI path that imports it
    inside a function (CI once failed on a stale `from gemma_cli.engine import hf_checkpoint`)."""
    import importlib
    import importlib.util

    top = ROOT.parent
    files = [*ROOT.rglob("*.py"), *(top / "tests").glob("*.py"), *(top / "benchmarks").glob("*.py")]
    bad = []
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module != "gemma_cli" and not node.module.startswith("gemma_cli."):
                continue
            where = f"{path.relative_to(top)}:{node.lineno}"
            if importlib.util.find_spec(node.module) is None:
                bad.append(f"{where}: no module {node.module}")
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*" or hasattr(module, alias.name):
                    continue
                if not (hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}")):
                    bad.append(f"{where}: {node.module} has no {alias.name}")
    assert bad == []
