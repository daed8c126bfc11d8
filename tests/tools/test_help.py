"""Every argparse tool's --help prints its whole docstring: the run commands and notes in it,
not only its first line."""

from __future__ import annotations

import ast
import json

import pytest

from tests.conftest import PYTHON, REPO, run_command

pytestmark = pytest.mark.slow  # one child process runs them all

TOOLS = sorted(path for path in (REPO / "tools").glob("*.py") if "import argparse" in path.read_text())
SHOW_HELP = """
import contextlib, io, json, runpy, sys
printed = {}
for tool in sys.argv[1:]:
    sys.argv = [tool, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(tool, run_name="__main__")
    printed[tool] = out.getvalue()
print(json.dumps(printed))
"""


def test_help_prints_the_whole_docstring():
    assert len(TOOLS) >= 8
    result = run_command([PYTHON, "-c", SHOW_HELP, *map(str, TOOLS)])
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    for tool in TOOLS:
        docstring = ast.get_docstring(ast.parse(tool.read_text()), clean=False)
        last_line = docstring.strip().splitlines()[-1].strip()
        assert last_line in printed[str(tool)], (tool.name, last_line)
