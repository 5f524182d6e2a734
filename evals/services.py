"""What every arm shares: one generator, one toolkit (and its snapshot), one embedded LLM.

Sharing is what makes the comparison fair and cheap: the same diffusion pipeline (or the same
Redis queue, so generation fans out over every worker) makes every arm's images, and the same
toolkit answers every arm's research, through the same tool cache or snapshot. Each arm still
gets its own `Services` (its own settings: LLM endpoint, policy options), which delegates the
shared parts here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.embedded_llm import EmbeddedLLMServer
from agent.services import Services
from agent.settings import Settings
from evals.snapshot import OfflineFetcher, OfflineProvider, SnapshotCache

if TYPE_CHECKING:
    import asyncio

    from generators.base import Generator
    from tools.toolkit import Toolkit


class SharedServices(Services):
    """Built from the eval's own settings; owns the generator, the toolkit and the snapshot."""

    def __init__(self, settings: Settings, snapshot: SnapshotCache | None = None) -> None:
        super().__init__(settings)
        self.snapshot = snapshot

    def toolkit(self) -> Toolkit:
        if self._toolkit is None:
            from tools.toolkit import Toolkit

            s = self.settings
            if self.snapshot is not None and self.snapshot.mode == "replay":
                # Through the toolkit's public hooks: offline stand-ins for the providers and
                # the fetcher, and replay mode, in which a call that was not recorded raises
                # ReplayMiss (the item fails loudly) instead of reaching the web.
                path = self.snapshot.path
                toolkit = Toolkit(
                    s.tools,
                    self.store,
                    retrieval=s.retrieval,
                    cache=self.snapshot,
                    provider_factory=lambda name: OfflineProvider(name, path),
                    fetcher=OfflineFetcher(path),
                    replay=True,
                )
            else:
                toolkit = Toolkit(s.tools, self.store, retrieval=s.retrieval, cache=self.snapshot)
            self._toolkit = toolkit
        return self._toolkit

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self.snapshot is not None:
                self.snapshot.close()


class ArmServices(Services):
    """An arm's services: its own settings for the LLM roles, the shared parts for the rest."""

    def __init__(self, settings: Settings, shared: SharedServices) -> None:
        super().__init__(settings)
        self.shared = shared
        self.store = shared.store

    def generator(self) -> Generator:
        return self.shared.generator()

    def toolkit(self) -> Toolkit:
        return self.shared.toolkit()

    def warm_up(self, settings: Settings | None = None) -> None:
        self.shared.warm_up(settings or self.settings)

    def _embedded_start(self, settings: Settings) -> asyncio.Task[EmbeddedLLMServer]:
        # One embedded llama.cpp server for every arm that has no endpoint of its own.
        return self.shared._embedded_start(settings)
