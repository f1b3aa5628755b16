"""Help a user can read and copy (issue 22, point 6): whole flag names at 80 columns, booleans
shown as flags, `--debug` and `ingot --version` listed and working."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from ingot import __version__
from ingot.cli.app import app
from tests.conftest import ingot

CLI = typer.main.get_command(app)
COMMANDS = sorted(CLI.commands)


def help_text(*args: str, columns: int) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)}, prog_name="ingot")
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_checked():
    assert COMMANDS == sorted(["build", "run", "serve", "inspect", "merge", "eval", "bench", "version"])


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_every_option_whole(command, columns):
    text = help_text(command, columns=columns)
    for param in CLI.commands[command].params:
        if param.param_type_name != "option":
            continue
        for name in (*param.opts, *param.secondary_opts):
            # the name as a word of its own: not cut (`--accuracy-lev…`), not run into its neighbours
            assert re.search(rf"(^|[\s,/]){re.escape(name)}($|[\s,])", text, re.MULTILINE), (name, text)
        if param.is_flag:  # a flag takes no value: no type after it
            assert not re.search(rf"{re.escape(param.opts[0])} <", text), (param.opts[0], text)
    assert "<bool>" not in text and "…" not in text
    assert max(map(len, text.splitlines())) <= columns, text


def test_run_help_keeps_its_generation_section():
    text = help_text("run", columns=80)
    generation = text.split("Generation:")[1]
    assert "--prompt" in generation and "--kv-cache-memory" in generation
    assert "--input" not in generation


@pytest.mark.parametrize("columns", [80, 200])
def test_root_help_lists_global_options_and_whole_command_summaries(columns):
    text = help_text(columns=columns)
    for name in ("--version", "--debug"):
        assert re.search(rf"^\s+{name}\s", text, re.MULTILINE), (name, text)
    for command in COMMANDS:
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{command} "))
        assert not line.endswith("..."), line  # each summary is one whole sentence
    assert max(map(len, text.splitlines())) <= columns, text


def test_version_option_and_command():
    for args in (["--version"], ["version"], ["--version", "build"]):  # eager: before any command
        proc = ingot(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{__version__}\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_anywhere(tmp_path, where):
    args = ["inspect", tmp_path / "nope"]
    proc = ingot(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "bundle not found" in proc.stderr
