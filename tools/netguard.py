"""Which network addresses a research download may connect to.

Web pages and search results are attacker-controlled: a link or a redirect can point at
127.0.0.1, an intranet host or the cloud metadata service (169.254.169.254). Every address a
download is about to connect to is checked here, after DNS resolution, so hostnames, numeric
tricks (`2130706433`, `0x7f.1`) and IPv6 translation/tunnel forms (IPv4-mapped and -compatible,
SIIT, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4, Teredo, ISATAP) are all judged by the
IPv4 address they really reach.

The allow-list exists for tests and intranets. Its entries are `host`, `host:port`, `[v6]:port`,
`CIDR` or `CIDR:port`, so a test can allow one loopback server (`127.0.0.1:8081`) while
another loopback port stays forbidden. A cloud-metadata address opens only for an entry naming
that single address, and never through a translation form of it: a broad NAT64 or 6to4 entry
for an intranet must not become a path to the instance's credentials.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from core.errors import InputError

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

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_ISATAP_IIDS = (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe")


def _v4(raw: bytes) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(raw)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Every IPv4 address `ip` may deliver packets to through a translation or tunnel form,
    labelled with the form: mapped, compatible, SIIT, NAT64 (well-known and local-use, every
    RFC 6052 layout a /48 to /96 local prefix allows), 6to4, Teredo (server and client), ISATAP."""
    b = ip.packed
    out: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip in _MAPPED:
        out.append(("IPv4-mapped", _v4(b[12:])))
    elif ip in _COMPATIBLE:
        out.append(("IPv4-compatible", _v4(b[12:])))
    elif ip in _TRANSLATED:
        out.append(("IPv4-translated", _v4(b[12:])))
    if ip in _NAT64_WELL_KNOWN:
        out.append(("NAT64", _v4(b[12:])))
    elif ip in _NAT64_LOCAL:
        # RFC 6052 layouts by prefix length; bits 64..71 (the "u" octet) are skipped.
        for raw in (b[12:16], b[9:13], b[7:8] + b[9:12], b[6:8] + b[9:11]):
            out.append(("NAT64", _v4(raw)))
    if ip.sixtofour is not None:
        out.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        out += [("Teredo", server), ("Teredo", client)]
    if b[8:12] in _ISATAP_IIDS:
        out.append(("ISATAP", _v4(b[12:])))
    return out


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why connecting to `ip` is refused by default, or None if it is a public address."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if isinstance(ip, ipaddress.IPv6Address):
        for form, inner_ip in embedded_ipv4(ip):
            inner = forbidden_reason(inner_ip)
            if inner:
                return f"{form}-wrapped {inner}"
        if ip.ipv4_mapped is not None:
            return None  # a mapped public address is that public address
        if ip.teredo is not None:
            return "Teredo tunnel"
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


def metadata_via_translation(ip: IPAddress) -> str | None:
    """The form and address when `ip` reaches a cloud-metadata address through an IPv6
    translation or tunnel form. No allow-list entry opens such an address: naming the metadata
    address exactly opens that address, never a wrapper of it."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    for form, inner in embedded_ipv4(ip):
        if inner in METADATA_ADDRESSES:
            return f"{form}-wrapped cloud metadata endpoint {inner}"
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


class AllowListError(InputError, ValueError):
    """A malformed `tools.allow_hosts` entry; the message names the entry and the fix.

    A ValueError too, so pydantic reports it as a settings validation error (the CLI then
    exits 2 with one line)."""


_HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")
_ENTRY_HELP = "use 'host', 'host:port', '[v6]:port', 'CIDR' or 'CIDR:port'"


def _port(text: str, entry: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise AllowListError(
            f"allow_hosts entry {entry!r}: port {text!r} is not a number in 1..65535 "
            f"({_ENTRY_HELP})"
        )
    return int(text)


def parse_allow_entry(entry: str) -> AllowEntry:
    """Parse one `allow_hosts` entry; raises AllowListError naming the entry if malformed."""
    if not isinstance(entry, str):
        raise AllowListError(f"allow_hosts entry {entry!r} is not a string ({_ENTRY_HELP})")
    raw = entry.strip()
    if not raw:
        raise AllowListError(f"allow_hosts entry is empty ({_ENTRY_HELP})")
    port: int | None = None
    body = raw
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise AllowListError(f"allow_hosts entry {entry!r}: '[' without ']' ({_ENTRY_HELP})")
        body, rest = raw[1:close], raw[close + 1 :]
        if rest.startswith("/"):  # [fd00::]/8:443
            prefix, _, p = rest[1:].partition(":")
            body = f"{body}/{prefix}"
            port = _port(p, entry) if p else None
        elif rest.startswith(":"):
            port = _port(rest[1:], entry)
        elif rest:
            raise AllowListError(
                f"allow_hosts entry {entry!r}: unexpected {rest!r} after ']' ({_ENTRY_HELP})"
            )
    elif raw.count(":") == 1:  # host:port, v4:port or v4/cidr:port (bare v6 has 2+ colons)
        body, p = raw.split(":")
        port = _port(p, entry)
    try:
        return AllowEntry(network=ipaddress.ip_network(body, strict=False), port=port)
    except ValueError:
        pass
    if raw.startswith("["):
        raise AllowListError(
            f"allow_hosts entry {entry!r}: {body!r} inside [] is not an IPv6 address or CIDR"
        )
    host = normalize_host(body)
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        host = ""
    if not _HOST_RE.fullmatch(host) or len(host) > 253:
        raise AllowListError(
            f"allow_hosts entry {entry!r} is neither a host name, an IP address nor a CIDR "
            f"({_ENTRY_HELP}; no schemes, paths or wildcards)"
        )
    return AllowEntry(host=host, port=port)


class AddressPolicy:
    """Decides, per (hostname, resolved address, port), whether a connection may be opened."""

    def __init__(self, allow: list[str] | tuple[str, ...] = ()) -> None:
        self.entries = [parse_allow_entry(e) for e in allow]

    def check(self, hostname: str, ip: IPAddress, port: int) -> str | None:
        """None if allowed; otherwise the reason, phrased for an error message."""
        wrapped = metadata_via_translation(ip)
        if wrapped is not None:
            return (
                f"{hostname}:{port} resolves to {ip} ({wrapped}); refused, and no "
                "tools.allow_hosts entry can open a metadata address through a translation form"
            )
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
