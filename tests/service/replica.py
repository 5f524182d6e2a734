"""One API replica as its own process, for the multi-replica tests and benchmark:
`python -m tests.service.replica --port P --drive-log FILE [--delay S]`.

The agent is the fake runner (the API layer is under test: leases, takeover, SSE across
replicas), and every run it drives is logged to `--drive-log` as "start|end <run> <pid>" lines,
so a test can count how many replicas drove a run to its end. Everything else is configured by
the environment like `groundwork serve` (GROUNDWORK_STORE__URL, GROUNDWORK_SERVICE__*).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.services import Services
from agent.settings import RunContext, Settings
from tests.service.fakes import FakeOutcome, FakeRunner


class LoggingRunner(FakeRunner):
    log_path: Path | None = None

    def _log(self, what: str, thread_id: str) -> None:
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(f"{what} {thread_id} {os.getpid()}\n")

    async def run(
        self,
        request: str | None,
        *,
        thread_id: str | None = None,
        policy: Any = "planned",
        context: RunContext | None = None,
        on_event: Callable[[Any], None] | None = None,
        write_folder: bool = True,
    ) -> FakeOutcome:
        self._log("start", str(thread_id))
        outcome = await super().run(
            request,
            thread_id=thread_id,
            policy=policy,
            context=context,
            on_event=on_event,
            write_folder=write_folder,
        )
        self._log("end", str(thread_id))
        return outcome


def main() -> None:
    import uvicorn

    from service.app import create_app
    from service.logs import configure_json_logging
    from service.settings import ServiceSettings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--drive-log", type=Path)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds per fake stage")
    args = parser.parse_args()

    def factory(settings: Settings, services: Services) -> LoggingRunner:
        runner = LoggingRunner(services, delay_s=args.delay)
        runner.log_path = args.drive_log
        return runner

    configure_json_logging("warning")
    app = create_app(Settings(), ServiceSettings(), runner_factory=factory)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
