"""Address policy: unit cases and a property test that no URL resolving to a forbidden range is
ever connected to, whatever form its host takes."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from pathlib import Path

import httpcore
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tools.conftest import tool_settings
from tools.fetch import FetchError, SafeFetcher, system_resolver
from tools.netguard import AddressPolicy, forbidden_reason, parse_allow_entry

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "100.100.100.200",
        "168.63.129.16",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "fec0::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "64:ff9b::7f00:1",
        "2002:a00:1::1",
        "2001:db8::1",
        "fd00:ec2::254",
        "2001::1",
    ],
)
def test_forbidden_addresses(addr: str) -> None:
    assert forbidden_reason(ip(addr)) is not None


@pytest.mark.parametrize(
    "addr", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(addr: str) -> None:
    assert forbidden_reason(ip(addr)) is None


def test_allow_entry_granularity() -> None:
    policy = AddressPolicy(
        ["127.0.0.1:8080", "10.0.0.0/8", "[::1]:9000", "intranet.local", "192.168.0.0/16:443"]
    )
    assert policy.check("127.0.0.1", ip("127.0.0.1"), 8080) is None
    assert policy.check("127.0.0.1", ip("127.0.0.1"), 8081) is not None
    assert policy.check("x", ip("10.9.9.9"), 1) is None
    assert policy.check("x", ip("::1"), 9000) is None
    assert policy.check("x", ip("::1"), 9001) is not None
    assert policy.check("intranet.local.", ip("172.16.5.5"), 80) is None
    assert policy.check("other.local", ip("172.16.5.5"), 80) is not None
    assert policy.check("x", ip("192.168.1.1"), 443) is None
    assert policy.check("x", ip("192.168.1.1"), 80) is not None
    assert policy.check("x", ip("::ffff:127.0.0.1"), 8080) is None  # mapped form, same host


def test_metadata_needs_an_exact_entry() -> None:
    broad = AddressPolicy(["169.254.0.0/16", "metadata.google.internal"])
    assert "metadata" in (broad.check("metadata.google.internal", ip("169.254.169.254"), 80) or "")
    exact = AddressPolicy(["169.254.169.254"])
    assert exact.check("x", ip("169.254.169.254"), 80) is None


@pytest.mark.parametrize("bad", ["", "host:99999", "[::1", "[::1]x", "a b", "10.0.0.0/8:http"])
def test_malformed_allow_entries_say_which(bad: str) -> None:
    with pytest.raises(ValueError, match="allow_hosts entry"):
        parse_allow_entry(bad)


# --- property: nothing forbidden is ever connected to ----------------------------------------


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records where a connection would go, then fails."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.attempts.append(host)
        raise httpcore.ConnectError("recording backend: not connecting")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SPECIAL = [
    "127.0.0.1",
    "0.0.0.0",
    "169.254.169.254",
    "10.0.0.1",
    "100.64.1.1",
    "224.0.0.251",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "fe80::1",
    "fd00:ec2::254",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "::",
    "ff02::1",
    "93.184.216.34",
    "8.8.4.4",
]
addresses = st.one_of(st.ip_addresses(), st.sampled_from(SPECIAL).map(ip))


def _host_forms(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    if isinstance(addr, ipaddress.IPv6Address):
        return st.just(f"[{addr}]")
    n = int(addr)
    o = addr.packed
    return st.sampled_from(
        [
            str(addr),
            str(n),  # 2130706433
            hex(n),  # 0x7f000001
            ".".join(f"0{b:o}" for b in o),  # 0177.0.0.01
            f"{o[0]}.{int.from_bytes(o[1:], 'big')}",  # 127.1 style
            f"[::ffff:{addr}]",
        ]
    )


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, bool]:
    addr = draw(addresses)
    via_name = draw(st.booleans())
    host = (
        "h-" + draw(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True)) + ".example"
        if via_name
        else draw(_host_forms(addr))
    )
    return host, addr, via_name


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=targets(),
    scheme=st.sampled_from(["http", "https"]),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.from_regex(r"/[A-Za-z0-9._~%/-]{0,20}", fullmatch=True),
)
def test_no_forbidden_address_is_ever_connected(
    tmp_path_factory: pytest.TempPathFactory,
    target: tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, bool],
    scheme: str,
    port: int | None,
    path: str,
) -> None:
    host, addr, via_name = target
    url = f"{scheme}://{host}{f':{port}' if port else ''}{path}"

    async def resolver(name: str, p: int) -> list[str]:
        if via_name:
            return [str(addr)]
        return await system_resolver(name, p)

    async def go() -> list[str]:
        backend = RecordingBackend()
        tmp = tmp_path_factory.getbasetemp()
        f = SafeFetcher(tool_settings(Path(tmp), []), resolver=resolver, inner_backend=backend)
        try:
            with pytest.raises(FetchError):
                await f.fetch(url, kind="page")
        finally:
            await f.aclose()
        return backend.attempts

    attempts = asyncio.run(go())
    for attempt in attempts:
        assert forbidden_reason(ip(attempt)) is None, f"{url} reached {attempt}"
    if via_name and forbidden_reason(addr) is None:
        assert attempts == [str(addr)], "a public address should be tried (test is not vacuous)"
    if forbidden_reason(addr) is not None:
        assert attempts == []
