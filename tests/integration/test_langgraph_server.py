"""LangGraph Server (`langgraph dev`, the langgraph-cli[inmem] package) serves the graph that
langgraph.json exports: its input and output JSON schemas generate on Python 3.11 and a run
completes through `langgraph_sdk` with the scripted LLM and the tiny pipeline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.support.scripted_llm import ScriptedLLM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("langgraph", path=str(Path(sys.executable).parent)) is None,
        reason="needs langgraph-cli[inmem] (the dev extra)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_langgraph_dev_serves_schemas_and_completes_a_run(
    tmp_path: Path, gw_env: dict[str, str], scripted_llm: ScriptedLLM
) -> None:
    from langgraph_sdk import get_client

    scripted_llm.add("GapReport", {"gaps": []})
    port = _free_port()
    env = {
        **gw_env,
        "GROUNDWORK_LLM__BASE_URL": scripted_llm.base_url,
        "GROUNDWORK_LLM__MODEL": "scripted-llm",
        "GROUNDWORK_TOOLS__TEXT_PROVIDER": "none",
        "GROUNDWORK_TOOLS__IMAGE_PROVIDER": "none",
        "LANGSMITH_TRACING": "false",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    }
    cli = str(Path(sys.executable).parent / "langgraph")
    proc = subprocess.Popen(
        [
            cli,
            "dev",
            "--no-browser",
            "--no-reload",
            "--allow-blocking",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(url + "/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail("langgraph dev did not come up in 120 s")
        client = get_client(url=url)
        assistants = await client.assistants.search(graph_id="groundwork")
        assert assistants, "the graph from langgraph.json is registered"
        schemas = await client.assistants.get_schemas(assistants[0]["assistant_id"])
        input_schema, output_schema = schemas["input_schema"], schemas["output_schema"]
        assert input_schema is not None and output_schema is not None
        assert list(input_schema["properties"]) == ["request"]
        assert {"grounded", "image", "notices"} <= set(output_schema["properties"])
        result = await client.runs.wait(
            None, "groundwork", input={"request": "a red apple on a table"}
        )
        assert isinstance(result, dict)
        assert result["grounded"]["gen_prompt"] == "a red apple on a table"
        assert result["image"]["image"]["sha256"]
        # The server's runs leave a run folder, as the CLI's do.
        (run_dir,) = list((tmp_path / "runs").iterdir())
        assert (run_dir / "run.json").exists() and (run_dir / "image.png").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
