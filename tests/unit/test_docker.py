"""The container files can build and the compose file is valid (issue 23): every COPY in the
Dockerfiles is inside the build context its .dockerignore leaves, and docker-compose.yml
validates (`docker compose config` where the plugin exists, else the Compose JSON schema) with
the multi-replica layout: postgres, two API replicas, scalable workers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "support" / "compose-spec.json"
RUNTIME_PACKAGES = {"core", "agent", "tools", "graphs", "retrieval", "generators", "evals"} | {
    "service",
    "cli",
}


# -- .dockerignore, as BuildKit reads it ---------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match plus `**` (any number of folders), as moby's patternmatcher."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


def _rules(ignore_file: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in ignore_file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Last matching rule wins; a rule matching a parent folder matches its files too."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            verdict = not negated
    return verdict


def test_the_ignore_matcher_reads_patterns_as_buildkit_does() -> None:
    rules = [(False, _pattern_regex("**")), (True, _pattern_regex("agent/**"))]
    rules.append((False, _pattern_regex("**/__pycache__")))
    assert excluded("tests/x.py", rules)
    assert not excluded("agent/stages/x.py", rules)
    assert excluded("agent/__pycache__/x.pyc", rules)


@cache
def _tracked() -> tuple[str, ...]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return tuple(line for line in listed.splitlines() if line)


def _copies(dockerfile: Path) -> list[list[str]]:
    """The sources of every COPY/ADD that reads the build context (not --from a stage)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        words = shlex.split(line.strip(), comments=True) if line.strip() else []
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources.append(args[:-1])
    return sources


@pytest.mark.parametrize(
    "dockerfile",
    sorted({p for p in (REPO / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore"}),
    ids=lambda p: p.name,
)
def test_every_copy_is_inside_the_build_context(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore.exists():
        ignore = REPO / ".dockerignore"
    rules = _rules(ignore) if ignore.exists() else []
    files = _tracked()
    missing = []
    for sources in _copies(dockerfile):
        for source in sources:
            inside = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
            left_out = [f for f in inside if excluded(f, rules)]
            if (
                not inside
                or len(left_out) == len(inside)
                or any(f.endswith(".py") for f in left_out)
            ):
                missing.append(f"{source}: {len(left_out)} of {len(inside)} files left out")
    assert missing == [], f"{dockerfile.name} copies what {ignore.name} leaves out: {missing}"


def test_the_image_carries_every_runtime_package() -> None:
    copied = {s.rstrip("/") for sources in _copies(REPO / "docker" / "Dockerfile") for s in sources}
    assert copied >= RUNTIME_PACKAGES


# -- docker-compose.yml -------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default}, ${VAR-default}, as compose does before validating."""
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def _compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    text = _interpolate((REPO / "docker-compose.yml").read_text(), env or {})
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_the_compose_file_validates() -> None:
    if _docker_compose_available():
        result = subprocess.run(
            ["docker", "compose", "-f", "docker-compose.yml", "config", "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["name"] = {"type": "string"}  # newer than the vendored revision
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_the_schema_check_catches_a_broken_file() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["name"] = {"type": "string"}
    broken = _compose()
    broken["services"]["api"]["deploy"]["replicas"] = "two"
    broken["services"]["api"]["restrat"] = "always"
    assert len(list(jsonschema.Draft201909Validator(schema).iter_errors(broken))) >= 2


def test_compose_runs_api_replicas_on_postgres_and_scalable_workers() -> None:
    services = _compose()["services"]
    assert "postgres" in services and "pg_isready" in " ".join(
        services["postgres"]["healthcheck"]["test"]
    )
    api = services["api"]
    assert api["deploy"]["replicas"] == 2
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["environment"]["GROUNDWORK_STORE__URL"].startswith("postgresql://")
    # A fixed single host port cannot be bound by two replicas: a range, one per replica.
    for port in api.get("ports", []):
        host = str(port).rsplit(":", 1)[0]
        low, _, high = host.partition("-")
        assert high and int(high) - int(low) + 1 >= api["deploy"]["replicas"], port
    assert "replicas" in services["worker"]["deploy"]
    scaled = _compose({"GROUNDWORK_API_REPLICAS": "3", "GROUNDWORK_WORKERS": "4"})["services"]
    assert scaled["api"]["deploy"]["replicas"] == 3
    assert scaled["worker"]["deploy"]["replicas"] == 4
    assert scaled["worker"]["deploy"]["resources"]["reservations"]["devices"]  # GPU kept
