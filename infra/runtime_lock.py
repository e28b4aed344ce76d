"""The image's lock: the packages that run the pipeline, and nothing else.

requirements.lock pins the development environment: the project with its `test` and `bench`
extras (pytest, librosa, scikit-learn and what they bring). The image needs only what the
project's own dependencies reach. This script walks that closure through the metadata of
the packages installed in this environment (installed from requirements.lock, so every pin
is the development lock's) and writes it as infra/requirements-runtime.lock.

    python infra/runtime_lock.py           # rewrite infra/requirements-runtime.lock
    python infra/runtime_lock.py --check   # exit 1, naming the difference, when it is stale

`make lock` runs it after re-resolving requirements.lock; tests/test_infra.py checks that the
file is what this script makes, and that every pin in it is the development lock's.
"""

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "infra" / "requirements-runtime.lock"
PROJECT = "emoalign"
# The installer's own packages: pip freeze leaves them out of requirements.lock, and the
# image build brings setuptools itself (for `pip install --no-deps .`).
INSTALLER = {"pip", "setuptools", "wheel"}
HEADER = ("# The image's lock (infra/Dockerfile, infra/Dockerfile.cuda): what the emoalign\n"
          "# distribution's own dependencies reach, pinned as in requirements.lock.\n"
          "# Written by `python infra/runtime_lock.py` (make lock); do not edit by hand.\n")


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    """Whether a dependency applies here, for the extras its dependent was asked for."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def closure(project: str = PROJECT) -> dict[str, str]:
    """{distribution name: version} of every package `project` needs, without its extras."""
    found: dict[str, str] = {}
    asked: dict[str, set[str]] = {}
    pending = [(canonicalize_name(project), set())]
    while pending:
        name, extras = pending.pop()
        if name in INSTALLER or name in asked and extras <= asked[name]:
            continue
        asked[name] = asked.get(name, set()) | extras
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed: install "
                             "requirements.lock first") from None
        if name != canonicalize_name(project):
            found[dist.metadata["Name"]] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if _wanted(requirement, asked[name]):
                pending.append((canonicalize_name(requirement.name), set(requirement.extras)))
    return found


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n"
                            for name, version in sorted(pins.items(), key=lambda p: p[0].lower()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the file instead of writing it")
    args = parser.parse_args()
    text = render(closure())
    if not args.check:
        RUNTIME_LOCK.write_text(text)
        print(f"wrote {RUNTIME_LOCK} ({text.count('==')} packages)")
        return 0
    if RUNTIME_LOCK.is_file() and RUNTIME_LOCK.read_text() == text:
        return 0
    print(f"{RUNTIME_LOCK.relative_to(ROOT)} is stale: run `python infra/runtime_lock.py`",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
