"""What each dependency of sr-ptq-bench costs on disk, measured in a fresh virtual environment.

    python scripts/install_size.py --venv /tmp/v [--extras lpips] [--out results/reference/install-size.md]

Creates the venv (if absent), installs torch and torchvision first (the pinned CPU/CUDA build pip finds), then
a copy of this repository (non-editable: the checkout is not touched) with the given extras, and measures
every installed distribution by the files its RECORD lists. Each direct dependency of the project is charged
the distributions only it pulls in (its exclusive closure); what two of them share is listed as shared.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


# --------------------------------------------------------------------------------- inside the venv

def _analyse() -> dict:
    """Sizes and dependency closures of the running interpreter's distributions (run with the venv's python)."""
    import re
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    dists = {norm(d.metadata["Name"]): d for d in metadata.distributions()}
    sizes = {}
    for name, dist in dists.items():
        total = 0
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
        sizes[name] = total

    def requires(name: str, extras: tuple[str, ...] = ()) -> set[str]:
        found = set()
        for text in dists[name].requires or []:
            req = Requirement(text)
            envs = [dict(default_environment(), extra=e) for e in (extras or ("",))]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                if norm(req.name) in dists:
                    found.add(norm(req.name))
        return found

    def closure(roots: set[str], exclude: set[str] = frozenset()) -> set[str]:
        seen, todo = set(), list(roots)
        while todo:
            name = todo.pop()
            if name in seen or name in exclude:
                continue
            seen.add(name)
            todo += requires(name)
        return seen

    project = norm("sr-ptq-bench")
    extras = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else ()
    direct = sorted(requires(project, extras))
    everything = closure(set(direct))
    exclusive = {}
    for dep in direct:
        others = closure(set(direct) - {dep})
        exclusive[dep] = sorted(closure({dep}) - others)
    shared = sorted(everything - {d for names in exclusive.values() for d in names})
    return {"sizes": sizes, "direct": direct, "exclusive": exclusive, "shared": shared,
            "closure": {dep: sorted(closure({dep})) for dep in direct},
            "project_total": sum(sizes[d] for d in everything)}


# ---------------------------------------------------------------------------------- from outside

def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f}"


def report(data: dict, extras: str) -> str:
    sizes = data["sizes"]
    lines = [f"# Installed size of sr-ptq-bench{f'[{extras}]' if extras else ''}",
             "", f"Measured by `python scripts/install_size.py` in a fresh venv (Python {sys.version.split()[0]}); "
             f"MB = 10^6 bytes of the files each distribution's RECORD lists.", "",
             f"Total of the project's dependency closure: **{_mb(data['project_total'])} MB**.", "",
             "| direct dependency | own MB | MB with all it requires | MB freed without it | pulled in only by it |",
             "|---|---|---|---|---|"]
    for dep in data["direct"]:
        data["exclusive"].setdefault(dep, [])
    rows = sorted(data["direct"], key=lambda d: -(sum(sizes[n] for n in data["closure"][d])))
    for dep in rows:
        only = data["exclusive"][dep]
        big = sorted((n for n in only if n != dep), key=lambda n: -sizes[n])
        listed = ", ".join(f"{n} {_mb(sizes[n])}" for n in big[:8]) + (f", +{len(big) - 8} more" if len(big) > 8 else "")
        lines.append(f"| {dep} | {_mb(sizes[dep])} | {_mb(sum(sizes[n] for n in data['closure'][dep]))} | "
                     f"{_mb(sum(sizes[n] for n in only))} | {listed or '-'} |")
    shared = sorted(data["shared"], key=lambda n: -sizes[n])
    lines += ["", f"Shared by several direct dependencies ({_mb(sum(sizes[n] for n in shared))} MB): "
              + ", ".join(f"{n} {_mb(sizes[n])}" for n in shared[:12]) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/v"))
    parser.add_argument("--extras", default="", help="comma-separated extras to install with the project")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args()
    if not (args.venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        _pip(args.venv, *TORCH)
        _pip(args.venv, "packaging")  # for the analysis only (not a dependency of the project)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "src"
        shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", "results", "*.egg-info", "__pycache__"))
        _pip(args.venv, f"{copy}[{args.extras}]" if args.extras else str(copy))
    out = subprocess.run([str(args.venv / "bin" / "python"), __file__, "--analyse-inside", args.extras],
                         check=True, capture_output=True, text=True).stdout
    text = report(json.loads(out), args.extras)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--analyse-inside":
        print(json.dumps(_analyse()))
        sys.exit(0)
    sys.exit(main())
