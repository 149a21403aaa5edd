"""The README's two commands are the ones CI and users run: keep them in sync with .ci/run and the matrices."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```\n(pip install [^\n]+)\n```", text)]


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
    assert [m.name for m in demo.models] == ["fsrcnn", "swinir-light"]
    assert all((REPO / "models" / "weights" / f"{m.name}_x{s}.safetensors").is_file()
               for m in demo.models for s in m.scales)


def test_ci_installs_chromium_before_the_readme_command():
    # tests/test_html_report.py opens the `bench report` page in headless Chromium: CI installs Debian's package
    # when it is missing, before the test command runs (and only warns if it cannot, so those tests then skip).
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    install = next(i for i, line in enumerate(ci_lines) if "apt-get install -y --no-install-recommends chromium" in line)
    assert any(line.startswith("if ! command -v chromium") for line in ci_lines[:install])
    assert install < ci_lines.index(readme_commands()[1])
