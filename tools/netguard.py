"""Which network addresses a research download may connect to.

Web pages and search results are attacker-controlled: a link or a redirect can point at
127.0.0.1, an intranet host or the cloud metadata service (169.254.169.254). Every address a
download is about to connect to is checked here, after DNS resolution, so hostnames, numeric
tricks (`2130706433`, `0x7f.1`), IPv4-mapped IPv6 (`::ffff:127.0.0.1`) and 6to4/NAT64 wrappers
are all judged by the address they really reach.

The allow-list exists for tests and intranets. Its entries are `host`, `host:port`, `[v6]:port`,
`CIDR` or `CIDR:port`, so a test can allow one loopback server (`127.0.0.1:8081`) while
another loopback port stays forbidden.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance-metadata and platform endpoints of the big clouds. Some of them are publicly
# routable-looking (Azure's wire server), so they are listed rather than left to range checks.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "169.254.169.253",  # AWS DNS
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
    )
)

_V4_FORBIDDEN: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified/this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT (shared)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    )
)

_V6_FORBIDDEN: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("2001:10::/28", "ORCHID"),
        ("2001:20::/28", "ORCHIDv2"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique-local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why connecting to `ip` is refused by default, or None if it is a public address."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = forbidden_reason(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if ip.sixtofour is not None:
            inner = forbidden_reason(ip.sixtofour)
            if inner:
                return f"6to4-wrapped {inner}"
        if ip.teredo is not None:
            return "Teredo tunnel"
        for net in _NAT64:
            if ip in net:
                inner = forbidden_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
                if inner:
                    return f"NAT64-wrapped {inner}"
        for net6, why in _V6_FORBIDDEN:
            if ip in net6:
                return why
        if ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback:
            return "reserved"
        return None
    for net4, why in _V4_FORBIDDEN:
        if ip in net4:
            return why
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AllowEntry:
    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, hostname: str, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip.version == self.network.version and ip in self.network
        return self.host == normalize_host(hostname)

    @property
    def names_exactly(self) -> bool:
        """Only an entry naming one address opens a metadata address: a host name is not
        enough, since its DNS answer is exactly what an attacker may control."""
        return self.network is not None and self.network.num_addresses == 1


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allow_hosts entry {entry!r}: port {text!r} is not 1..65535")
    return int(text)


def parse_allow_entry(entry: str) -> AllowEntry:
    """Parse one `allow_hosts` entry; raises ValueError naming the entry if it is malformed."""
    raw = entry.strip()
    if not raw:
        raise ValueError("allow_hosts entry is empty")
    port: int | None = None
    body = raw
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise ValueError(f"allow_hosts entry {entry!r}: '[' without ']'")
        body, rest = raw[1:close], raw[close + 1 :]
        if rest.startswith("/"):  # [fd00::]/8:443
            prefix, _, p = rest[1:].partition(":")
            body = f"{body}/{prefix}"
            port = _port(p, entry) if p else None
        elif rest.startswith(":"):
            port = _port(rest[1:], entry)
        elif rest:
            raise ValueError(f"allow_hosts entry {entry!r}: unexpected {rest!r} after ']'")
    elif raw.count(":") == 1:  # host:port, v4:port or v4/cidr:port (bare v6 has 2+ colons)
        body, p = raw.split(":")
        port = _port(p, entry)
    try:
        return AllowEntry(network=ipaddress.ip_network(body, strict=False), port=port)
    except ValueError:
        pass
    host = normalize_host(body)
    if not host or "/" in host or any(c.isspace() for c in host):
        raise ValueError(
            f"allow_hosts entry {entry!r} is neither a host name, an IP address nor a CIDR"
        )
    return AllowEntry(host=host, port=port)


class AddressPolicy:
    """Decides, per (hostname, resolved address, port), whether a connection may be opened."""

    def __init__(self, allow: list[str] | tuple[str, ...] = ()) -> None:
        self.entries = [parse_allow_entry(e) for e in allow]

    def check(self, hostname: str, ip: IPAddress, port: int) -> str | None:
        """None if allowed; otherwise the reason, phrased for an error message."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        reason = forbidden_reason(ip)
        if reason is None:
            return None
        for entry in self.entries:
            if entry.matches(hostname, ip, port) and (
                reason != "cloud metadata endpoint" or entry.names_exactly
            ):
                return None
        return (
            f"{hostname}:{port} resolves to {ip} ({reason}); refused. Add it to "
            "tools.allow_hosts (e.g. 'host:port' or a CIDR) if this is intended"
        )
