"""The lock files agree with pyproject.toml.

requirements/runtime.txt and requirements/dev.txt are written by `make lock`. A
dependency added to pyproject.toml (or a lower bound raised) without `make lock` fails
here, before an install from the lock would silently miss it.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.settings import PROJECT_DIR

RUNTIME_LOCK = PROJECT_DIR / "requirements" / "runtime.txt"
DEV_LOCK = PROJECT_DIR / "requirements" / "dev.txt"


def pyproject() -> dict:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())


def declared(extra: str | None = None) -> list[Requirement]:
    project = pyproject()["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def pins(lock: Path) -> dict[str, list[tuple[Version, int]]]:
    """name -> [(pinned version, number of hashes)], one entry per line of the lock."""
    text = lock.read_text().replace("\\\n", " ")
    found: dict[str, list[tuple[Version, int]]] = defaultdict(list)
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement, *hashes = line.split(" --hash=")
        req = Requirement(requirement)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{lock.name}: {line} is not pinned"
        found[canonicalize_name(req.name)].append((Version(spec.version), len(hashes)))
    return found


@pytest.mark.parametrize(
    ("lock", "extras"),
    [(RUNTIME_LOCK, [None]), (DEV_LOCK, [None, "dev"])],
    ids=["runtime", "dev"],
)
def test_every_dependency_is_pinned_within_its_bounds(lock, extras):
    pinned = pins(lock)
    missing, outside = [], []
    for extra in extras:
        for req in declared(extra):
            versions = pinned.get(canonicalize_name(req.name))
            if not versions:
                missing.append(str(req))
                continue
            outside += [
                f"{req} (locked {version})"
                for version, _ in versions
                if not req.specifier.contains(version, prereleases=True)
            ]
    hint = f" in {lock.relative_to(PROJECT_DIR)}: run `make lock`"
    assert not missing, "not pinned" + hint + f": {missing}"
    assert not outside, "pinned outside pyproject.toml's bounds" + hint + f": {outside}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_every_pin_has_hashes(lock):
    unhashed = [name for name, entries in pins(lock).items() if any(n == 0 for _, n in entries)]
    assert not unhashed


def test_the_image_runs_what_the_tests_ran():
    dev = pins(DEV_LOCK)
    differ = {
        name: (versions, dev.get(name))
        for name, versions in pins(RUNTIME_LOCK).items()
        if {v for v, _ in versions} != {v for v, _ in dev.get(name, [])}
    }
    assert not differ, f"runtime and dev locks pin different versions, run `make lock`: {differ}"


def test_installs_go_through_the_locks():
    bootstrap = (PROJECT_DIR / "ops" / "bootstrap.sh").read_text()
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert "--require-hashes" in bootstrap and "requirements/dev.txt" in bootstrap
    assert "--require-hashes -r requirements/runtime.txt" in dockerfile
