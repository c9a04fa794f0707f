"""constraints.txt: the project's own dependency closure, compiled from pyproject.toml.

    python scripts/constraints.py compile   # rewrite constraints.txt (uv and the package index)
    python scripts/constraints.py check     # CI: constraints.txt is current (fast, offline)

``compile`` runs ``uv pip compile`` on the default dependencies and the ``dev`` extra of
pyproject.toml plus ``constraints.in`` (the versions held back on purpose: torch / torchvision),
for CI's Python (3.11); an existing constraints.txt makes uv keep its versions where they still
fit, so a recompile after adding a dependency moves nothing else. It records a hash of its
inputs in the file's header. ``check`` fails with one line naming what to run when the
dependencies or constraints.in changed since (the hash differs), a direct dependency has no pin,
or a pin of constraints.in is not in the file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
PINS = REPO / "constraints.in"
OUTPUT = REPO / "constraints.txt"
PYTHON = "3.11"  # .github/workflows/ci.yml's
COMMAND = "python scripts/constraints.py compile"
HASH_LINE = "# inputs sha256: "


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(path.read_text(encoding="utf-8"))


def requirements() -> list[str]:
    """The default dependencies and the dev extra of pyproject.toml, as written there."""
    project = _toml(PYPROJECT)["project"]
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement ('jsonargparse[x]>=4' -> 'jsonargparse')."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _pins_in() -> list[str]:
    lines = PINS.read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def inputs_hash() -> str:
    """sha256 of the compile's inputs: the requirements, constraints.in's pins, the Python."""
    text = "\n".join([*sorted(requirements()), "--", *_pins_in(), "--", PYTHON])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_constraints() -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("constraints: uv not found; pip install uv (it is in the dev extra)", file=sys.stderr)
        return 2
    command = [
        uv, "pip", "compile", str(PYPROJECT.name), str(PINS.name), "--extra", "dev",
        "--python-version", PYTHON, "--custom-compile-command", COMMAND,
        "-o", str(OUTPUT.name), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        return done.returncode
    text = OUTPUT.read_text(encoding="utf-8")
    OUTPUT.write_text(f"{HASH_LINE}{inputs_hash()}\n{text}", encoding="utf-8")
    print(f"constraints: wrote {OUTPUT.name} ({len(_pinned(text))} pins)")
    return 0


def _pinned(text: str) -> dict[str, str]:
    """{normalised name: 'name==version' line} of a compiled constraints file."""
    pins = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[_name(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    return pins


def check() -> int:
    """0 when constraints.txt is current; else one line on stderr saying what to run."""
    if not OUTPUT.is_file():
        problem = f"{OUTPUT.name} is missing"
    else:
        text = OUTPUT.read_text(encoding="utf-8")
        recorded = next(
            (ln[len(HASH_LINE) :] for ln in text.splitlines() if ln.startswith(HASH_LINE)), None
        )
        pins = _pinned(text)
        unpinned = [r for r in requirements() if _name(r) not in pins]
        held = [p for p in _pins_in() if pins.get(_name(p), "").lower() != p.lower()]
        if recorded is None:
            problem = f"{OUTPUT.name} has no '{HASH_LINE.strip()}' line (not made by {COMMAND})"
        elif recorded != inputs_hash():
            problem = (
                f"{OUTPUT.name} is older than the dependencies of pyproject.toml / {PINS.name}"
            )
        elif unpinned:
            problem = f"{OUTPUT.name} pins no version of {', '.join(unpinned)}"
        elif held:
            problem = f"{OUTPUT.name} does not hold {', '.join(held)} from {PINS.name}"
        else:
            print(f"constraints: {OUTPUT.name} is current ({len(pins)} pins)")
            return 0
    print(f"constraints: {problem}; run `{COMMAND}` and commit the result", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv == ["compile"]:
        return compile_constraints()
    if argv == ["check"]:
        return check()
    print(f"usage: python scripts/constraints.py compile|check (got {argv})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
