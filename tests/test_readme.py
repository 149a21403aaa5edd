"""The README's two commands are the ones CI and users run: keep them in sync with .ci/run and the matrices."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The README's one-line `pip install ...` blocks, in order: the main job, then the test command."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```(?:bash)?\n(pip install [^\n]+)\n```", text)]


def test_readme_starts_with_the_main_job_and_the_test_command():
    main_job, tests = readme_commands()[:2]
    assert main_job == ("pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . "
                        "&& bench run --matrix demo")
    assert tests == "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[test]' && python -m pytest -q"


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme_commands()[1] in ci_lines


def test_the_demo_needs_nothing_outside_the_clone():
    from bench.runner.matrix import load_matrix
    demo = load_matrix("demo")
    assert demo.calibration.train_dir == "sample-train"
    assert [d.name for d in demo.datasets] == ["sample"]
    assert [m.name for m in demo.models] == ["rlfn-s"]
    assert all((REPO / "models" / "weights" / f"{m.name}_x{s}.safetensors").is_file()
               for m in demo.models for s in m.scales)


def test_ci_installs_chromium_before_the_readme_command():
    # tests/test_html_report.py opens the `bench report` page in headless Chromium: CI installs Debian's package
    # when it is missing, before the test command runs (and only warns if it cannot, so those tests then skip).
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    install = next(i for i, line in enumerate(ci_lines) if "apt-get install -y --no-install-recommends chromium" in line)
    assert any(line.startswith("if ! command -v chromium") for line in ci_lines[:install])
    assert install < ci_lines.index(readme_commands()[1])


# ------------------------------------------------------------------ the README as a front door, and the docs' links

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_readme_is_a_front_door_of_at_most_400_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; move reference material into docs/"


def test_the_demo_table_and_time_are_marked_for_the_measurement_that_replaces_them():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("demo-time", "demo-table"):
        assert text.count(f"<!-- {name} -->") == 1 and text.count(f"<!-- /{name} -->") == 1, name
        inside = text.split(f"<!-- {name} -->")[1].split(f"<!-- /{name} -->")[0]
        assert inside.strip(), f"nothing between the {name} markers"
    table = text.split("<!-- demo-table -->")[1].split("<!-- /demo-table -->")[0]
    assert "| FP " in table and "2DQuant" in table
    assert text.index("<!-- /demo-time -->") < text.index("<!-- demo-table -->")


def _first_column_names(text: str, heading: str) -> set[str]:
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    first_table = section[section.index("\n|"):].split("\n\n", 1)[0]  # the section's first table: the list
    rows = [line for line in first_table.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    names = set()
    for row in rows[1:]:  # the header row names no model
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        column = 1 if heading == "Methods" else 0  # Methods: | method | name | ...; Models: | model | ...
        names |= set(re.findall(r"`([^`]+)`", cells[column]))
    return names


def test_the_readme_lists_every_registered_method_and_model():
    import methods  # noqa: F401  (registers the built-in methods)
    import models  # noqa: F401
    from methods.registry import get_method_class, list_methods
    from models.registry import get_entry, list_models
    text = (REPO / "README.md").read_text(encoding="utf-8")
    # the methods the project ships: tests (executors, plugins) register throwaway methods in the same registry
    shipped = {name for name in list_methods() if get_method_class(name).__module__.startswith("methods.")}
    assert "minmax" in shipped
    assert _first_column_names(text, "Methods") == shipped
    shipped_models = {name for name in list_models() if get_entry(name).builder.__module__.startswith("models.")}
    assert "imdn" in shipped_models
    assert _first_column_names(text, "Models") == shipped_models


def _anchor(heading: str) -> str:
    # GitHub's rule: lower case, drop punctuation but hyphens and underscores, spaces become hyphens
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def broken_links(pages: list[Path]) -> list[str]:
    """Relative Markdown links of `pages` whose file or heading does not exist."""
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_every_relative_link_of_the_readme_and_docs_reaches_a_file_and_heading():
    broken = broken_links(DOC_FILES)
    assert not broken, "\n".join(broken)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [no heading](other.md#nosuch) "
                    "[web](https://example.org)\n", encoding="utf-8")
    assert broken_links([page]) == ["page.md: missing.md (no such file)", "page.md: other.md#nosuch (no such heading)"]


def test_the_anchor_rule_matches_githubs():
    assert _anchor("The HTML report (`bench report`)") == "the-html-report-bench-report"
    assert _anchor("Deployment: packed files, ONNX int8, measured latency") == \
        "deployment-packed-files-onnx-int8-measured-latency"
    assert _anchor("NoisyQuant and CondiQuant, SwinIR-light x2 on Set5") == "noisyquant-and-condiquant-swinir-light-x2-on-set5"


def test_the_python_examples_compile_and_import_what_exists():
    import ast
    import importlib
    for page in DOC_FILES:
        for code in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            tree = ast.parse(code, filename=str(page))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = importlib.import_module(node.module)
                    missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
                    assert not missing, f"{page.relative_to(REPO)}: {node.module} has no {missing}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)
