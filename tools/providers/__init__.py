"""Search providers behind one normalized contract (`tools.providers.base`)."""

from tools.providers.base import (
    ImageCandidate,
    ProviderError,
    SearchProvider,
    make_provider,
)

__all__ = ["ImageCandidate", "ProviderError", "SearchProvider", "make_provider"]
