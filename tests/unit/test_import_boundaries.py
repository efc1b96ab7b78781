"""Import boundaries of the four packages, read from the source with `ast` (nothing is imported):

- layering data_prep <- pretrain <- finetune <- launch: a package imports only itself and the packages
  to its left (data_prep none of the others; pretrain no finetune or launch; finetune no launch), and
  none of them imports tests/ or benchmarks/;
- each heavy or optional dependency is imported by one module only, which the rest go through:
  ONLY_IN below. benchmarks/, tests/ and scripts/ are outside these rules.

Every import counts wherever it is written (module level, inside a function, under TYPE_CHECKING), and so
does importlib.import_module / __import__ of a constant name. docs/design.md section 3 says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("data_prep", "pretrain", "finetune", "launch")  # each may import itself and those before it
NOT_A_LIBRARY = ("tests", "benchmarks", "scripts")  # importable by nothing in LAYERS

# dependency -> the only modules (paths from the repository root) that may import it; every other module goes
# through them. No exception is needed today: checked against the code when these rules were written.
ONLY_IN: dict[str, set[str]] = {
    # The engine, ZeRO, collectives, saving, loading, the universal-checkpoint conversion and the fp32
    # consolidation all live in the runtime: pretrain/checkpoint.py, pretrain/session.py and finetune/model.py
    # (which loads a DeepSpeed checkpoint as init.checkpoint) call pretrain.runtime, never deepspeed.
    "deepspeed": {"pretrain/runtime.py"},
    # Runs, nesting, metrics, artifacts: pretrain.tracking.Tracker. launch/main_job.py and launch/ablate.py,
    # which create the parent runs and nest the training runs under them, use Tracker; launch/mlflow_server.sh
    # starts a server from the shell, not an import.
    "mlflow": {"pretrain/tracking.py"},
    # Reading shards: the loader package's reading module, and its storage module for webdataset's brace and
    # "::" shard-list syntax. finetune/data.py reads its splits through pretrain.loader, and
    # data_prep/sharding.py writes the tars with the standard library's tarfile.
    "webdataset": {"pretrain/loader/reading.py", "pretrain/loader/storage.py"},
    # spaCy's part-of-speech tagger (the optional `pos` extra), behind data_prep.tagger's heuristic fallback.
    "spacy": {"data_prep/tagger.py"},
}


def module_name(path: Path) -> str:
    """pretrain/objectives/gmr.py -> pretrain.objectives.gmr; a package's __init__.py -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved against `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def sources() -> list[Path]:
    files = sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py"))
    assert len(files) > 40, files  # the packages are where this test thinks they are
    return files


def all_imports() -> dict[str, list[tuple[int, str]]]:
    """repo-relative path -> its imports."""
    return {p.relative_to(REPO).as_posix(): imports_of(p.read_text(), module_name(p), p.name == "__init__.py")
            for p in sources()}  # fmt: skip


def test_the_parser_sees_every_kind_of_import() -> None:
    source = (
        "import os, deepspeed.comm as dist\n"
        "from mlflow.entities import Run\n"
        "from . import sibling\n"
        "from ..loader import build\n"
        "def f():\n"
        "    import webdataset as wds\n"
        "    importlib.import_module('spacy')\n"
        "    return __import__('launch.pipeline')\n"
        "if TYPE_CHECKING:\n"
        "    from finetune.recipe import FinetuneConfig\n"
    )
    assert sorted(imports_of(source, "pretrain.objectives.gmr")) == [
        (1, "deepspeed.comm"), (1, "os"), (2, "mlflow.entities"), (3, "pretrain.objectives"),
        (4, "pretrain.loader"), (6, "webdataset"), (7, "spacy"), (8, "launch.pipeline"), (10, "finetune.recipe"),
    ]  # fmt: skip
    assert imports_of("from . import x\n", "pretrain", is_package=True) == [(1, "pretrain")]
    assert module_name(REPO / "pretrain" / "objectives" / "__init__.py") == "pretrain.objectives"


def test_layering_data_prep_pretrain_finetune_launch() -> None:
    bad = []
    for path, imports in all_imports().items():
        layer = path.split("/")[0]
        allowed = LAYERS[: LAYERS.index(layer) + 1]
        forbidden = (set(LAYERS) - set(allowed)) | set(NOT_A_LIBRARY)
        bad += [f"{path}:{line} imports {name} ({layer} may import {', '.join(allowed)} only)"
                for line, name in imports if top(name) in forbidden]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_each_dependency_is_imported_by_its_one_module_only() -> None:
    imports = all_imports()
    bad = [f"{path}:{line} imports {name}; only {sorted(ONLY_IN[top(name)])} may (the rest go through them)"
           for path, found in imports.items() for line, name in found
           if top(name) in ONLY_IN and path not in ONLY_IN[top(name)]]  # fmt: skip
    assert not bad, "\n".join(bad)
    # the allowed sets are exact: a module that stopped importing the dependency leaves its set
    stale = [f"{path} is allowed to import {dep} but does not" for dep, paths in ONLY_IN.items() for path in paths
             if not any(top(name) == dep for _, name in imports.get(path, []))]  # fmt: skip
    assert not stale, "\n".join(stale)


def test_masked_mean_has_one_home() -> None:
    """pretrain/pooling.py defines masked_mean and every user imports it from there (it used to live in
    pretrain/objectives/gmr.py, whose importers then reached it through gmr)."""
    bad = []
    for path in [*sources(), *sorted((REPO / "tests").rglob("*.py")), *sorted((REPO / "benchmarks").rglob("*.py"))]:
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "masked_mean" and rel != "pretrain/pooling.py":
                bad.append(f"{rel}:{node.lineno} defines masked_mean")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module != "pretrain.pooling"
                and any(alias.name == "masked_mean" for alias in node.names)
            ):
                bad.append(f"{rel}:{node.lineno} imports masked_mean from {node.module}, not pretrain.pooling")
    assert not bad, "\n".join(bad)
