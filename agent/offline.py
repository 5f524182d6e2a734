"""Offline (or web search switched off) is stated once per run, not once per tool call
(issue 21.10). The toolkit keeps each failed call's own error (every call is still listed under
Research); both research policies add this one notice to the run."""

from __future__ import annotations

from collections.abc import Sequence

from tools.observations import Observation


def web_unavailable(obs: Observation) -> bool:
    """The call failed because the web is off for this process (offline, provider 'none', a
    provider that cannot start): the toolkit starts all those errors with one prefix."""
    from tools.toolkit import DISABLED

    return not obs.ok and (obs.error or "").startswith(DISABLED)


def web_unavailable_notice(
    new: Sequence[Observation], earlier: Sequence[Observation] = ()
) -> list[str]:
    """One notice per run when the web is unavailable, however many tool calls found it out
    (issue 21.10: offline is stated once per run, not per call). `earlier`: the run's
    observations before `new`; one of them already failing this way means it was stated. The
    toolkit shortens its own repeats, and remembers offline across runs, so the reason comes
    from the most detailed error."""
    if any(web_unavailable(o) for o in earlier):
        return []
    failed = [o for o in new if web_unavailable(o)]
    if not failed:
        return []
    from tools.toolkit import DISABLED

    reasons = [(o.error or "")[len(DISABLED) :].lstrip(": ") for o in failed]
    reason = max((r for r in reasons if "see the first" not in r), key=len, default="offline")
    return [
        f"the web is unavailable for this run ({reason[:300]}); {len(failed)} web tool "
        f"call{'s' if len(failed) != 1 else ''} failed so far, and research used local "
        "material only (each call is listed under Research)"
    ]
