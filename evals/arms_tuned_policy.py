"""The `tuned-policy` arm: a policy made by `groundwork tune policy`, served by a maintained
OpenAI-compatible server with no code of ours in the serving path (what the harness measures is
what a deployment gets), driving the react policy with the eval's tools and generator.

The arm reads the output folder's `tune.json` (evals never imports `tuning/`: the arm refers to
its output by path), starts the server on a free loopback port in `start()`, points only the
policy role at it (`llm.policy_base_url` / `llm.policy_model`; helper roles, critic and judge
stay the eval's), prompts it with the react profile it was trained with, and stops the server in
`close()`.

Servers:
- `transformers`: `transformers serve <merged folder>` (transformers' own server; CPU or GPU;
  it loads full weights, so a LoRA is served from the merged folder: `merge = true`).
- `vllm`: `vllm serve <base> --enable-lora --lora-modules <name>=<adapter>` (GPU; the adapter is
  served beside the base). vLLM adds LoRAs to Hugging Face weights, not to a GGUF base.
- `external`: already served at `base_url` as `model` (e.g. a shared vLLM).
- llama.cpp (`llama-cpp-python[server]`) needs the model converted to GGUF by llama.cpp's
  `convert_hf_to_gguf.py`, which the installed packages do not ship (neither llama-cpp-python's
  wheel nor gguf): with a llama.cpp checkout, convert the merged folder, serve it with
  `python -m llama_cpp.server --model F.gguf`, and use `server = "external"`.

A text-only student cannot take images in its turns: `<profile>-text` (e.g.
`gen-searcher-text`) is that profile with images left out of tool results, registered here on
first use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.settings import Settings
from core.errors import GroundworkError, InputError
from evals.arms import AgentSystem, arm_settings
from evals.config import TunedPolicyArm
from evals.services import ArmServices, SharedServices

Server = Literal["transformers", "vllm", "external"]
SERVERS: tuple[Server, ...] = ("transformers", "vllm")
"""The servers an arm (or `groundwork tune policy --serve`) can start."""


class ServeError(GroundworkError):
    """The policy's server did not start or answer (the message carries its log's tail)."""


@dataclass(frozen=True)
class Tuned:
    """A finished `groundwork tune policy` output folder, as tune.json describes it."""

    folder: Path
    info: dict[str, object]

    @property
    def react_profile(self) -> str:
        return str(self.info.get("react_profile") or "gen-searcher")

    @property
    def merged(self) -> Path | None:
        name = self.info.get("merged")
        return self.folder / str(name) if name else None

    @property
    def weights(self) -> Path:
        return self.folder / str(self.info.get("weights") or "adapter")


def read_tuned(path: Path) -> Tuned:
    """The output folder (or its parent holding vNNN versions: the latest finished one)."""
    path = Path(path).expanduser()
    if not (path / "tune.json").is_file():
        finished = sorted(p for p in path.glob("v[0-9][0-9][0-9]") if (p / "tune.json").is_file())
        if not finished:
            raise InputError(
                f"{path} is not a finished tune output (no tune.json): point at the vNNN folder "
                "that groundwork tune policy wrote, or finish its training (--resume)"
            )
        path = finished[-1]
    try:
        info = json.loads((path / "tune.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}/tune.json is unreadable: {exc}") from exc
    return Tuned(path, info)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _executable(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def serve_command(
    tuned: Tuned, *, server: Server = "transformers", host: str = "127.0.0.1", port: int = 8000
) -> tuple[list[str], str]:
    """(argv of the server, the model name requests must use)."""
    if server == "transformers":
        weights = tuned.merged
        if weights is None or not (weights / "config.json").is_file():
            raise InputError(
                f"{tuned.folder} has no merged weights, which transformers serve needs: train "
                "with merge = true (or method = full), or serve the adapter with vLLM"
            )
        exe = _executable("transformers")
        if exe is None:
            raise ServeError("the transformers CLI is not installed (pip install transformers)")
        return [exe, "serve", str(weights), "--host", host, "--port", str(port)], str(weights)
    if server == "vllm":
        exe = _executable("vllm")
        if exe is None:
            raise ServeError("vllm is not installed here (pip install vllm, on a GPU host)")
        if tuned.info.get("gguf_file"):
            raise InputError(
                f"{tuned.folder} was trained on a GGUF base; vLLM adds LoRAs to Hugging Face "
                "weights only: train from the base's Hugging Face folder or id"
            )
        name = str(tuned.info.get("name") or "tuned")
        base = str(tuned.info.get("base_path") or tuned.info.get("base"))
        if tuned.info.get("method") == "full":
            return [exe, "serve", str(tuned.weights), "--host", host, "--port", str(port)], str(
                tuned.weights
            )
        argv = [exe, "serve", base, "--enable-lora", "--lora-modules", f"{name}={tuned.weights}"]
        return [*argv, "--host", host, "--port", str(port)], name
    raise InputError(f"unknown server {server!r}; use one of: {', '.join(SERVERS)}")


class ServedPolicy:
    """`with ServedPolicy(tuned) as served: served.base_url, served.model`."""

    def __init__(
        self,
        tuned: Tuned,
        *,
        server: Server = "transformers",
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.tuned = tuned
        self.server = server
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.argv, self.model = serve_command(tuned, server=server, host=host, port=self.port)
        self.log_path = tuned.folder / f"serve-{server}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ServedPolicy:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(
                    f"{self.server} server exited with code {self.process.returncode}: "
                    f"{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise ServeError(
            f"{self.server} server did not answer on {self.base_url} within "
            f"{self.startup_timeout_s:.0f}s: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> ServedPolicy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the arm --------------------------------------------------------------------------------------
def text_profile(name: str) -> str:
    """Register `<profile>-text` (the profile without images in tool results) when asked for
    one; any other name is returned as is."""
    from agent.profiles import PROFILES, get_profile, register_profile

    if name.endswith("-text") and name not in PROFILES:
        base = get_profile(name.removesuffix("-text"))
        register_profile(dataclasses.replace(base, name=name, vision=False))
    return name


class TunedPolicySystem(AgentSystem):
    """An AgentSystem (react policy, resumable threads) whose policy endpoint is a server this
    arm owns for the eval's duration."""

    def __init__(
        self,
        config: TunedPolicyArm,
        base: Settings,
        shared: SharedServices,
        checkpointer: Any,
    ) -> None:
        self.served: ServedPolicy | None = None
        if config.server == "external":
            if not config.base_url or not config.model:
                raise InputError(f'arm {config.name}: server = "external" needs base_url and model')
            base_url, model = config.base_url, config.model
            tuned = read_tuned(Path(config.path)) if Path(config.path).exists() else None
        else:
            tuned = read_tuned(Path(config.path))
            self.served = ServedPolicy(
                tuned, server=config.server, startup_timeout_s=config.startup_timeout_s
            )
            base_url, model = self.served.base_url, self.served.model
        profile = config.react_profile or (tuned.react_profile if tuned else "openai")
        overrides: dict[str, Any] = {k: dict(v) for k, v in config.settings.items()}
        llm = overrides.setdefault("llm", {})
        llm.setdefault("policy_base_url", base_url)
        llm.setdefault("policy_model", model)
        llm.setdefault("policy_vision", False)
        overrides.setdefault("agent", {}).setdefault("react_profile", text_profile(profile))
        settings = arm_settings(config.model_copy(update={"settings": overrides}), base)
        self.name: str = config.name
        self.kind: str = config.kind
        self.policy = "react"
        self.settings = settings
        self.services = ArmServices(settings, shared)
        self.checkpointer = checkpointer
        self.runner: Any = None

    async def start(self) -> None:
        if self.served is not None:
            await asyncio.to_thread(self.served.start)
        await super().start()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self.served is not None:
                await asyncio.to_thread(self.served.stop)
