"""What the example tests share: importing an example's script by path, and reading its JSON Lines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def load_script(folder: Path, name: str):
    """Import `folder/<name>.py` by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
