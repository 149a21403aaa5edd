"""Every shell command in README.md and docs/*.md is dry-checked, without running it.

A command is collected from the fenced shell blocks (```bash, ```sh, ```shell, untagged ```; in ```console
blocks only the `$ ` lines), with `\\` continuations joined and `&&`, `;`, `|` and comments split off. Then:
* `bench ...` is parsed by the real parser (`bench.cli.build_parser().parse_args`, which runs nothing), and the
  matrix, model, scale, method and its parameters, scope, bits, dataset, run and files it names must exist;
* `pip install ...` names extras of pyproject.toml and the torch pins of .ci/run; `python -m pytest` and
  `python FILE` name files of the repository; `tox -e NAME` names an environment of tox.ini.
The placeholder convention (docs/cli.md#conventions): `$SHARED` is the shared reference folder; upper-case words
(`DIR`, `FILE.csv`, `N`) stand for what the user supplies; `/tmp/...` files are written by an earlier command of
the same page; any other path is relative to the repository root.
"""
from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))
SHARED_TOKEN = "/<SHARED>"  # what `$SHARED` becomes before the words are split (absolute, so never a repo path)
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_TAGS = {"", "bash", "sh", "shell"}
SEPARATORS = {"&&", "||", ";", "|"}
OUTPUT_DESTS = {"out", "export", "output", "keep_onnx", "screenshot"}  # options whose path the command writes
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?/?$")  # DIR, DIR/, FILE.csv, N


@dataclass(frozen=True)
class Command:
    file: Path
    line: int
    argv: tuple[str, ...]

    def where(self) -> str:
        name = self.file.relative_to(REPO) if self.file.is_relative_to(REPO) else self.file.name
        return f"{name}:{self.line}: {shlex.join(self.argv)}"


@dataclass
class PageState:
    """What earlier commands of one page made: files under /tmp and runs under results/."""
    outputs: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)


# ------------------------------------------------------------------------------------------ collecting

def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language tag, line number of the first content line, content lines) of every fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r"^```(\S*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append((match.group(1), i + 2, lines[i + 1:end]))
        i = end + 1
    return blocks


def logical_lines(tag: str, start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Shell lines with their `\\` continuations joined; in a console block, only the prompted ones."""
    result, pending, first = [], "", start
    prompted = tag == "console"
    for number, line in enumerate(lines, start):
        if not pending:
            if prompted:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        result.append((first, pending + line))
        pending = ""
    assert not pending, f"line {first}: a `\\` continuation runs off the end of its block"
    return result


def split_commands(line: str) -> list[list[str]]:
    """The commands of one shell line: words split as bash does, at &&, ||, ; and |, comments dropped."""
    line = line.replace("${SHARED}", SHARED_TOKEN).replace("$SHARED", SHARED_TOKEN)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [command for command in commands if command]


def collect(path: Path) -> list[Command]:
    commands = []
    for tag, start, lines in fenced_blocks(path.read_text(encoding="utf-8")):
        if tag not in SHELL_TAGS and tag != "console":
            continue
        for number, line in logical_lines(tag, start, lines):
            commands += [Command(path, number, tuple(argv)) for argv in split_commands(line)]
    return commands


# --------------------------------------------------------------------------------------------- checks

def check_path(value: str, command: Command, state: PageState, writes: bool) -> None:
    """A path the command names exists (or is made by an earlier command, or is a placeholder)."""
    if value.startswith(SHARED_TOKEN):
        if SHARED.is_dir():
            real = SHARED / value[len(SHARED_TOKEN):].lstrip("/")
            assert writes or real.exists(), f"{command.where()}: $SHARED{value[len(SHARED_TOKEN):]} is not in {SHARED}"
        return
    if PLACEHOLDER.match(value) or PLACEHOLDER.match(value.split("/")[0]):
        return
    if value.startswith("/tmp/"):
        if writes:
            state.outputs.add(value.rstrip("/"))
        else:
            assert any(value == out or value.startswith(out + "/") for out in state.outputs), (
                f"{command.where()}: {value} is read but no earlier command of the page writes it")
        return
    assert not Path(value).is_absolute(), f"{command.where()}: absolute path {value}; use $SHARED, /tmp/ or DIR"
    assert writes or (REPO / value).exists(), f"{command.where()}: {value} does not exist in the repository"


def looks_like_path(value: str) -> bool:
    return "/" in value or bool(re.search(r"\.(pth|pt|onnx|safetensors|py|ya?ml|csv|png|html|json|md)$", value))


def _parse(argv: list[str], command: Command) -> argparse.Namespace:
    from bench.cli import build_parser
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{command.where()}: the bench parser rejects it: {errors.getvalue().strip().splitlines()[-1]}")


@contextlib.contextmanager
def plugins_loaded(paths: list[str]):
    """Load --plugin files for the parse, and leave the registries as they were afterwards."""
    import bench.plugins
    from methods.registry import METHOD_REGISTRY
    from models.registry import MODEL_REGISTRY
    methods_before, models_before = dict(METHOD_REGISTRY), dict(MODEL_REGISTRY)
    loaded_before, bytecode_before = set(bench.plugins._LOADED), sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no examples/__pycache__: the suite leaves the source tree as it found it
    try:
        for path in paths:
            bench.plugins.load_plugin(REPO / path)
        yield
    finally:
        sys.dont_write_bytecode = bytecode_before
        for registry, before in ((METHOD_REGISTRY, methods_before), (MODEL_REGISTRY, models_before)):
            registry.clear()
            registry.update(before)
        bench.plugins._LOADED.clear()
        bench.plugins._LOADED.update(loaded_before)


def check_names(args: argparse.Namespace, command: Command) -> None:
    """The registered names the command uses: model and scale, method and its parameters, scope, bits, dataset."""
    from bench.cli import validate
    from bench.data.dataset import known_dataset_names
    from bench.errors import BenchError
    try:
        model = getattr(args, "model", None) or (getattr(args, "name", None) if args.command == "models" else None)
        scale = getattr(args, "scale", None)
        if model is not None:
            if scale is not None:
                validate.check_model_scale(model, scale)
            else:
                from models.registry import get_entry
                get_entry(model)
        if getattr(args, "method", None):
            validate.method_from_args(args.method, getattr(args, "method_param", []))
        if getattr(args, "scope", None):
            validate.check_scope(args.scope)
        if hasattr(args, "w_bits"):
            if isinstance(getattr(args, "bits", None), str):  # --bits mixed:B: its budget's uniform bits
                from bench.mixed.spec import parse_mixed
                args.bits = parse_mixed(args.bits, "--bits").like
            validate.bits_from_args(args)
        if getattr(args, "dataset", None):
            assert args.dataset in known_dataset_names(), (
                f"{command.where()}: unknown dataset {args.dataset} (known: {known_dataset_names()})")
    except BenchError as exc:
        pytest.fail(f"{command.where()}: {exc}")


def check_bench(command: Command, state: PageState) -> None:
    from bench.errors import BenchError
    from bench.runner.matrix import load_matrix, resolve_matrix_path
    argv = list(command.argv[1:])
    plugins = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--plugin"]
    with plugins_loaded(plugins):
        args = _parse(argv, command)
        check_names(args, command)
    typed = set(argv)
    for dest, value in vars(args).items():
        if dest in ("run", "matrix", "func"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, Path)) and str(item) in typed and looks_like_path(str(item)):
                check_path(str(item), command, state, writes=dest in OUTPUT_DESTS)
    if args.command == "run":
        try:
            path = resolve_matrix_path(args.matrix)
            load_matrix(path)
        except BenchError as exc:
            pytest.fail(f"{command.where()}: {exc}")
        assert path.resolve().is_relative_to(REPO / "matrices") or "/" in args.matrix, (
            f"{command.where()}: matrix {args.matrix} is not a file of matrices/")
        if args.out is None:
            state.runs.add(args.matrix)
    for run in (args.run if isinstance(getattr(args, "run", None), list) else [getattr(args, "run", None)]):
        if run is None:
            continue
        if "/" in run:
            check_path(run, command, state, writes=False)
        else:
            assert run in state.runs or (REPO / "results" / run).is_dir(), (
                f"{command.where()}: run {run} is made by no earlier `bench run --matrix {run}` of the page")


def check_pip(command: Command, state: PageState) -> None:
    argv = list(command.argv[1:])
    assert argv[:1] == ["install"], f"{command.where()}: only `pip install` is documented"
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
                 ["optional-dependencies"])
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for word in argv[1:]:
        if word in ("-e", "-q", "-U", "--upgrade"):
            continue
        match = re.fullmatch(r"(\.)(?:\[([a-z0-9,_-]+)\])?", word)
        if match:
            unknown = set(filter(None, (match.group(2) or "").split(","))) - extras
            assert not unknown, f"{command.where()}: extras {sorted(unknown)} are not in pyproject.toml ({sorted(extras)})"
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9a-z.+]*", word), f"{command.where()}: unpinned or odd {word}"
        assert word in ci.split(), f"{command.where()}: {word} is not the pin .ci/run installs"


def check_python(command: Command, state: PageState) -> None:
    argv = list(command.argv[1:])
    if argv[:2] == ["-m", "pytest"]:
        for word in argv[2:]:
            if not word.startswith("-"):
                assert (REPO / word.split("::")[0]).exists(), f"{command.where()}: {word} does not exist"
        return
    assert argv and argv[0].endswith(".py"), f"{command.where()}: only `python -m pytest` and `python FILE.py`"
    assert (REPO / argv[0]).is_file(), f"{command.where()}: {argv[0]} does not exist"


def check_tox(command: Command, state: PageState) -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "tox.ini")
    argv = list(command.argv[1:])
    assert argv[:1] == ["-e"] and len(argv) >= 2, f"{command.where()}: name the environment with -e"
    assert f"testenv:{argv[1]}" in config, f"{command.where()}: tox.ini has no [testenv:{argv[1]}]"


def check_ray(command: Command, state: PageState) -> None:
    assert command.argv[1:2] == ("start",), f"{command.where()}: only `ray start` is documented"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras.get("ray") == ["ray"], f"{command.where()}: the `ray` extra no longer installs ray"


def check_assignment(command: Command, state: PageState) -> None:
    # `SHARED=../shared` documents the placeholder's default; any other variable would be a new convention
    assert command.argv == ("SHARED=../shared",), f"{command.where()}: only SHARED=../shared is a known variable"


CHECKS = {"bench": check_bench, "pip": check_pip, "python": check_python, "tox": check_tox, "ray": check_ray}


def check_page(path: Path) -> list[Command]:
    state = PageState()
    commands = collect(path)
    for command in commands:
        head = command.argv[0]
        if "=" in head and len(command.argv) == 1:
            check_assignment(command, state)
            continue
        assert head in CHECKS, f"{command.where()}: no dry check for `{head}` commands; add one to this test"
        CHECKS[head](command, state)
    return commands


# ---------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_of_the_page_parses_and_names_what_exists(path):
    check_page(path)


def test_the_readme_has_the_two_commands_and_its_other_commands_are_checked():
    commands = collect(REPO / "README.md")
    heads = [command.argv[:3] for command in commands]
    assert ("bench", "run", "--matrix") in heads and ("python", "-m", "pytest") in heads
    assert len(commands) >= 10  # the install, the main job, the test command and the follow-up commands


def test_the_collector_splits_continuations_operators_and_comments():
    text = ("```bash\nSHARED=../shared\npip install -e '.[test]' && python -m pytest -q  # all\n"
            "bench eval --model imdn --scale 2 \\\n     --dataset Set5   # one\n```\n"
            "```console\n$ bench cost --model swinir-light --scale 4\nswinir-light x4, ...\n```\n"
            "```python\nprint('not a command')\n```\n")
    blocks = fenced_blocks(text)
    commands = [argv for tag, start, lines in blocks if tag in SHELL_TAGS | {"console"}
                for _, line in logical_lines(tag, start, lines) for argv in split_commands(line)]
    assert commands == [["SHARED=../shared"], ["pip", "install", "-e", ".[test]"], ["python", "-m", "pytest", "-q"],
                        ["bench", "eval", "--model", "imdn", "--scale", "2", "--dataset", "Set5"],
                        ["bench", "cost", "--model", "swinir-light", "--scale", "4"]]


@pytest.mark.parametrize("line, message", [
    ("bench run --matrix nosuch", "unknown matrix"),
    ("bench eval --model imdn --scale 5 --dataset Set5", "has no x5"),
    ("bench quantize --model imdn --scale 2 --method dobi --bogus --out /tmp/x.pt", "rejects it"),
    ("bench quantize --model imdn --scale 2 --method dobi --method-param nosuch=1 --out /tmp/x.pt", "nosuch"),
    ("bench eval --model imdn --scale 2 --dataset Set5 --quantized /tmp/never-written.pt", "no earlier command"),
    ("bench eval --model imdn --scale 2 --dataset Set5 --weights models/weights/none.safetensors", "does not exist"),
    ("bench table --run nosuchrun", "no earlier `bench run"),
    ("pip install -e '.[nosuch]'", "not in pyproject"),
    ("python -m pytest -q tests/test_nosuch.py", "does not exist"),
    ("tox -e nosuch", "no [testenv:nosuch]"),
    ("curl https://example.org", "no dry check"),
])
def test_a_wrong_command_is_caught(tmp_path, line, message):
    page = tmp_path / "page.md"
    page.write_text(f"```bash\n{line}\n```\n", encoding="utf-8")
    with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(message)):
        check_page(page)
