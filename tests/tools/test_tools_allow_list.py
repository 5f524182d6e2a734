"""Allow-list entries never open a cloud-metadata address through an IPv6 translation or tunnel
form, and a malformed entry is refused when settings load (issue 9)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.errors import GroundworkError
from tools.netguard import (
    METADATA_ADDRESSES,
    AddressPolicy,
    AllowListError,
    embedded_ipv4,
    forbidden_reason,
    parse_allow_entry,
)
from tools.settings import ToolSettings

V6 = ipaddress.IPv6Address
V4_METADATA = sorted(
    (a for a in METADATA_ADDRESSES if isinstance(a, ipaddress.IPv4Address)), key=int
)


def _wrap(form: str, v4: ipaddress.IPv4Address, noise: int = 0) -> V6:
    """`v4` inside the named IPv6 translation/tunnel form (`noise` fills the free bits)."""
    n = int(v4)
    b = v4.packed
    if form == "mapped":
        return V6((0xFFFF << 32) | n)
    if form == "compatible":
        return V6(n)
    if form == "siit":
        return V6((0xFFFF << 48) | n)
    if form == "nat64":
        return V6((0x0064FF9B << 96) | n)
    if form.startswith("nat64-local-"):  # RFC 6052 layouts inside 64:ff9b:1::/48
        plen = int(form.rsplit("-", 1)[1])
        raw = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
        if plen == 96:
            raw[12:16] = b
        elif plen == 64:
            raw[9:13] = b
        elif plen == 56:
            raw[7], raw[9:12] = b[0], b[1:]
        else:  # 48
            raw[6:8], raw[9:11] = b[:2], b[2:]
        return V6(bytes(raw))
    if form == "6to4":
        return V6((0x2002 << 112) | (n << 80) | (noise & 0xFFFF_FFFF_FFFF_FFFF_FFFF))
    if form == "teredo-server":
        return V6((0x20010000 << 96) | (n << 64) | (noise & 0xFFFF_FFFF_FFFF_FFFF))
    if form == "teredo-client":
        return V6((0x20010000 << 96) | (noise & 0xFFFF_FFFF) << 64 | (n ^ 0xFFFFFFFF))
    if form == "isatap":
        prefix = 0x20010DB8_12340000 if noise % 2 else 0x2A00_1450_4001_0800
        return V6((prefix << 64) | (0x00005EFE << 32) | n)
    raise AssertionError(form)


FORMS = [
    "mapped",
    "compatible",
    "siit",
    "nat64",
    "nat64-local-96",
    "nat64-local-64",
    "nat64-local-56",
    "nat64-local-48",
    "6to4",
    "teredo-server",
    "teredo-client",
    "isatap",
]

# Every way an operator could open a translation range, broad or exact.
BROAD_ALLOW = [
    "::/0",
    "::/96",
    "::ffff:0:0/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2002::/16",
    "2001::/32",
    "2001:db8::/32",
    "2a00::/12",
    "0.0.0.0/0",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "168.63.0.0/16",
    "192.0.0.0/24",
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("meta", V4_METADATA, ids=str)
def test_metadata_through_a_translation_form_is_never_allowed(
    form: str, meta: ipaddress.IPv4Address
) -> None:
    wrapped = _wrap(form, meta, noise=0x1234_5678_9ABC)
    assert meta in [v4 for _f, v4 in embedded_ipv4(wrapped)], (form, wrapped)
    assert forbidden_reason(wrapped) is not None
    exact = [str(wrapped), f"[{wrapped}]:80", str(meta)]  # naming the wrapper itself, too
    policy = AddressPolicy([*BROAD_ALLOW, *exact])
    reason = policy.check("metadata.example", wrapped, 80)
    assert reason is not None and "metadata" in reason, (form, wrapped)


@settings(max_examples=300, deadline=None)
@given(
    form=st.sampled_from(FORMS),
    meta=st.sampled_from(V4_METADATA),
    noise=st.integers(min_value=0, max_value=2**80 - 1),
    port=st.integers(1, 65535),
)
def test_property_no_allow_list_opens_wrapped_metadata(
    form: str, meta: ipaddress.IPv4Address, noise: int, port: int
) -> None:
    wrapped = _wrap(form, meta, noise)
    policy = AddressPolicy([*BROAD_ALLOW, str(wrapped), str(meta)])
    assert policy.check("h.example", wrapped, port) is not None


def test_metadata_named_exactly_still_opens_the_plain_address_only() -> None:
    exact = AddressPolicy(["169.254.169.254", "fd00:ec2::254"])
    assert exact.check("x", ipaddress.ip_address("169.254.169.254"), 80) is None
    assert exact.check("x", ipaddress.ip_address("fd00:ec2::254"), 80) is None
    assert exact.check("x", ipaddress.ip_address("::ffff:169.254.169.254"), 80) is not None
    broad = AddressPolicy(["fd00::/8", "fd00:ec2::/32"])
    assert "metadata" in (broad.check("x", ipaddress.ip_address("fd00:ec2::254"), 80) or "")


def test_intranet_translation_entries_still_open_what_they_name() -> None:
    """The fix refuses metadata, not NAT64 as such: an intranet behind NAT64 stays usable."""
    policy = AddressPolicy(["64:ff9b::/96"])
    assert policy.check("x", _wrap("nat64", ipaddress.IPv4Address("10.1.2.3")), 443) is None


BAD_ENTRIES = [
    "host:99999",
    "host:0",
    "host:",
    "host:http",
    "10.0.0.0/8:65536",
    "[::1]:70000",
    "[::1]:",
    "[::1",
    "[example.com]:80",
    "http://example.com",
    "example.com/path",
    "*.example.com",
    "host:80:90",
    "a b",
    "exa$mple.com",
    "",
    "   ",
    "10.0.0.0/33",
]


@pytest.mark.parametrize("bad", BAD_ENTRIES)
def test_malformed_entries_are_groundwork_errors_naming_the_entry(bad: str) -> None:
    with pytest.raises(AllowListError, match="allow_hosts entry") as info:
        parse_allow_entry(bad)
    assert isinstance(info.value, GroundworkError) and "\n" not in str(info.value)


@pytest.mark.parametrize("bad", BAD_ENTRIES)
def test_malformed_entries_fail_settings_validation(bad: str) -> None:
    with pytest.raises(ValidationError, match="allow_hosts entry"):
        ToolSettings(allow_hosts=["127.0.0.1:8080", bad])


@pytest.mark.parametrize(
    "good", ["127.0.0.1:8080", "10.0.0.0/8", "[::1]:9000", "wiki.corp", "Wiki.Corp.:443"]
)
def test_good_entries_pass_settings_validation(good: str) -> None:
    assert ToolSettings(allow_hosts=[good]).allow_hosts == [good]


@pytest.mark.slow
def test_cli_exits_2_with_one_line_for_a_bad_allow_entry(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GROUNDWORK_TOOLS__ALLOW_HOSTS": json.dumps(["wiki.corp:99999"]),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "a red kangaroo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "wiki.corp:99999" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
