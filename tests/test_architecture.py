"""The package's layering, read from the source: no import cycle, the pipeline on top, env code free of training code,
a clean ``ruff check`` with the configured rules."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "prism_lit"

# what may sit above everything else: the command line and the pipeline that drives every stage
TOP = ("prism_lit.cli", "prism_lit.commands", "prism_lit.pipeline")
# what training code is: env code must run without it (an env is usable from any RL library)
TRAINING = ("prism_lit.rl", "prism_lit.sft", "prism_lit.probe", "prism_lit.policy", "prism_lit.pipeline",
            "prism_lit.distributed", "lightning", "torch", "transformers", "peft")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names imported by a module (``top_level_only``: only statements run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports nested in module-level if/try blocks
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    names: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_nothing_below_the_pipeline_imports_it():
    offenders = {name: sorted(i for i in _imports(path, top_level_only=False) if _within(i, ("prism_lit.pipeline",)))
                 for name, path in MODULES.items() if not _within(name, TOP)}
    assert not {k: v for k, v in offenders.items() if v}


def test_env_code_never_imports_training_code():
    offenders = {name: sorted(i for i in _imports(path, top_level_only=False) if _within(i, TRAINING))
                 for name, path in MODULES.items() if _within(name, ("prism_lit.envs",))}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycle_between_modules():
    """Module-level imports between the package's modules form no cycle (lazy imports inside functions are a
    deliberate way to keep optional dependencies optional and are not counted)."""
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in _imports(path, top_level_only=True):
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported.startswith("prism_lit"):
                targets.add(imported)
        graph[name] = targets
    # a package's __init__ re-exporting its submodules is not a cycle with those submodules
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_ruff_is_clean_with_the_configured_rules():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    root = SRC.parent
    result = subprocess.run([ruff, "check", "src", "tests", "--output-format", "concise"], cwd=root,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that carry code: no blanks, comments, docstring-only or import
    lines (as pylint's similarity checker ignores them)."""
    lines = []
    in_docstring = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.strip()
        quotes = text.count('"""') + text.count("'''")
        if in_docstring or (quotes and text.startswith(('"""', "'''", 'r"""'))):
            in_docstring = (in_docstring and quotes != 1) or (not in_docstring and quotes == 1)
            continue
        if not text or text.startswith(("#", "import ", "from ")):
            continue
        lines.append((number, text))
    return lines


def test_no_block_of_ten_lines_is_repeated_in_the_package():
    """A copy-paste detector: any 10 consecutive code lines that occur twice in src/ (same file or not)."""
    window = 10
    seen: dict[tuple[str, ...], tuple[Path, int, int]] = {}
    repeated = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = _code_lines(path)
        for i in range(len(lines) - window + 1):
            block = tuple(text for _, text in lines[i:i + window])
            first = seen.setdefault(block, (path, i, lines[i][0]))
            if first[0] != path or i - first[1] >= window:  # not the same lines overlapping themselves
                repeated.append(f"{path.relative_to(SRC)}:{lines[i][0]} repeats "
                                f"{first[0].relative_to(SRC)}:{first[2]}")
    assert not repeated, "\n".join(repeated[:10])
