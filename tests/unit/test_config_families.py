"""Settings for both address families: a public address per family, dual-stack [::] listeners, the flags."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from alg.cli import _parser
from alg.errors import ConfigError
from alg.ops.config import load_config, settings_from_mapping

UPSTREAM = "upstream: 198.51.100.10:21\n"


def test_a_public_address_per_family(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(UPSTREAM + "public_address: 203.0.113.1\npublic_address6: 2001:db8:1::1\ndual_stack: true\n")
    settings = load_config(path)
    assert settings.public_address == IPv4Address("203.0.113.1")
    assert settings.public_address6 == IPv6Address("2001:db8:1::1")
    assert settings.dual_stack is True
    defaults = settings_from_mapping({"upstream": "198.51.100.10"})
    assert defaults.public_address6 is None and defaults.dual_stack is False


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("public_address6: 203.0.113.1\n", "public_address6", "expected an IPv6 address"),
        ("public_address6: '::'\n", "public_address6 (line 2)", "cannot be advertised"),
        ("dual_stack: 1\n", "dual_stack (line 2)", ""),
    ],
)
def test_bad_family_settings_name_their_key(tmp_path: Path, text: str, where: str, says: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(UPSTREAM + text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert where in str(caught.value) and says in str(caught.value)


def test_flags_set_them() -> None:
    args = _parser().parse_args(
        ["run", "--upstream", "198.51.100.10", "--public-address6", "2001:db8:1::1", "--dual-stack"]
    )
    settings = load_config(None, upstream=args.upstream, public_address6=args.public_address6, dual_stack=True)
    assert settings.public_address6 == IPv6Address("2001:db8:1::1") and settings.dual_stack
