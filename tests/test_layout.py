"""The package's structure: the commands at the top, every other module in a package of one layer that
imports only from layers below it (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import medtransfer

PACKAGE = Path(medtransfer.__file__).parent
COMMANDS = {"train", "evaluate", "predict", "report"}
# the layers from the bottom; a package may import its own layer and every layer below
LAYERS = [{"utils"}, {"evaluation", "finetune"}, {"models", "data"}, {"features"}, {"callbacks", "loggers"}]


def layer_of(package: str) -> int:
    return (
        len(LAYERS) if package in COMMANDS else next(i for i, layer in enumerate(LAYERS) if package in layer)
    )


def imported_packages(path: Path) -> set[str]:
    """medtransfer sub-packages a module imports (at any depth of the module: lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found |= {n.split(".")[1] for n in names if n.startswith("medtransfer.")}
    return found


def test_top_level_holds_the_commands_and_packages_only():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == COMMANDS
    assert packages == set().union(*LAYERS)
    for package in packages:  # each says what lives there and what it may import
        assert (PACKAGE / package / "__init__.py").read_text().startswith('"""'), package


def test_every_import_goes_down_the_layers():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for package in imported_packages(path) - {own}:
            if layer_of(package) >= layer_of(own) and not (own in COMMANDS and package in COMMANDS):
                upward.append(f"{path.relative_to(PACKAGE)} imports medtransfer.{package}")
    assert upward == []


def test_generic_layers_never_name_a_resnet_layer():
    for package in ("finetune", "evaluation"):
        for path in (PACKAGE / package).rglob("*.py"):
            text = path.read_text()
            assert "layer4" not in text and "conv1" not in text, path
