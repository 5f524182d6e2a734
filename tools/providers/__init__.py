"""Search providers behind one normalized contract (`tools.providers.base`), and the one
registry that builds them by name.

The registry lives here, above the providers, so `base` never imports a provider back (each
provider imports `base`; nothing imports upward): a new provider is one import and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tools.providers.base import ImageCandidate, ProviderError, ProviderName, SearchProvider
from tools.providers.ddgs_provider import DDGSProvider
from tools.providers.searxng_provider import SearxngProvider
from tools.settings import ToolSettings

ProviderFactory = Callable[[ToolSettings, ThreadPoolExecutor], SearchProvider]


def _searxng(settings: ToolSettings, executor: ThreadPoolExecutor) -> SearchProvider:
    if not settings.searxng_url:
        raise ProviderError(
            "provider 'searxng' selected but tools.searxng_url is not set "
            "(e.g. GROUNDWORK_TOOLS__SEARXNG_URL=http://localhost:8888)"
        )
    return SearxngProvider(settings)


PROVIDERS: dict[str, ProviderFactory] = {
    "ddgs": DDGSProvider,
    "searxng": _searxng,
}


def make_provider(
    name: ProviderName | str, settings: ToolSettings, *, executor: ThreadPoolExecutor
) -> SearchProvider:
    """Build the named provider; raises ProviderError saying what is missing."""
    factory = PROVIDERS.get(name)
    if factory is None:
        raise ProviderError(f"unknown search provider {name!r}; use {', '.join(PROVIDERS)} or none")
    return factory(settings, executor)


__all__ = [
    "PROVIDERS",
    "ImageCandidate",
    "ProviderError",
    "ProviderFactory",
    "SearchProvider",
    "make_provider",
]
