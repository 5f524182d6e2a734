"""Bearer tokens and signed artifact URLs.

Tokens are compared as sha256 digests with `hmac.compare_digest` against every configured
token (no early exit), so neither the content nor the length of a guess shows in the timing.
A caller is known by its token's *name*: names own runs and artifacts and appear in logs;
the token itself is never stored or logged.

Artifact URLs are signed (HMAC over sha256 and expiry) like OpenAI's image URLs: an `<img>` tag
or any HTTP client can fetch them without a token, until they expire.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from service.parsing import is_hex_digest
from service.settings import ServiceSettings


class Auth:
    def __init__(self, cfg: ServiceSettings) -> None:
        self._tokens = [
            (name, hashlib.sha256(token.encode()).digest())
            for name, token in sorted(cfg.token_values().items())
        ]
        if cfg.url_secret is not None:
            key = cfg.url_secret.get_secret_value().encode()
        else:
            material = "\n".join(f"{n}={t}" for n, t in sorted(cfg.token_values().items()))
            key = hashlib.sha256(b"groundwork-artifact-urls\n" + material.encode()).digest()
        self._key = key
        self.url_ttl_s = cfg.url_ttl_s

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, authorization: str | None) -> str | None:
        """The token's name for a valid `Authorization: Bearer <token>` header, else None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: str | None = None
        for name, expected in self._tokens:
            if hmac.compare_digest(digest, expected):
                found = name
        return found

    def _mac(self, sha256: str, expires: int) -> str:
        return hmac.new(self._key, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, sha256: str, *, now: float | None = None) -> str:
        """Query string for a signed URL of an artifact: `exp=...&sig=...`."""
        expires = int((now if now is not None else time.time()) + self.url_ttl_s)
        return f"exp={expires}&sig={self._mac(sha256, expires)}"

    def verify(self, sha256: str, expires: int, signature: str) -> bool:
        """Whether `signature` signs this artifact until `expires` (not yet past).

        The signature is checked to be 64 lowercase hex digits first: `hmac.compare_digest`
        raises TypeError on a non-ASCII string (`sig=%C3%A9`), which must be a 403, not a 500.
        """
        if expires < time.time() or not is_hex_digest(signature):
            return False
        return hmac.compare_digest(self._mac(sha256, expires).encode(), signature.encode())
