"""Policy from rules/*.yaml: who may connect, where data and redirected connections may go, which commands pass.

Rules: rule files are validated like the settings (errors name the file, key path and YAML line) and merged into
one immutable RuleSet; the gateway holds it in a Policy and swaps it whole on reload, so every check sees either
the old rules or the new ones. ACLs are deny-overrides; command rules are matched in order, first match wins.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alg.errors import PolicyDenied
from alg.ftp.addresses import IPAddress
from alg.ftp.reasons import Refusal
from alg.ftp.wire import Command
from alg.ops.config import load_yaml_model

log = logging.getLogger("ftp_alg.rules")

IPNetwork = IPv4Network | IPv6Network

# Patterns run on at most this many bytes of argument: Python's re has no time limit, and an admin's pattern
# may backtrack badly on a long input. A path of 1 KiB is deep; raise it per file for deeper trees.
MAX_ARGUMENT_BYTES = 1024
MAX_PATTERN_CHARS = 1000
MAX_REPLY_TEXT = 200
# RFC 959 4.2: a path problem is 550 (file unavailable); a refused verb reads best as 502 (not implemented).
PATH_RULE_CODE = 550
VERB_RULE_CODE = 502
CLIENT_REFUSAL_TEXT = "Access denied: your address may not use this FTP gateway."


# ---- value parsers (text in, typed value out, PydanticCustomError otherwise) ------------------------------------


def _invalid(message: str) -> PydanticCustomError:
    # Type "config": config.py's error explainer shows the message verbatim, with file, key path and line.
    return PydanticCustomError("config", message)


def _one_network(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise _invalid(f"expected an address or ADDRESS/PREFIX, got {type(value).__name__}")
    text = value.strip()
    try:
        return ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise _invalid(f"{text!r} is not an address or ADDRESS/PREFIX (CIDR), e.g. 198.51.100.0/24") from None
    raise _invalid(f"{text!r} has bits set beyond the prefix; did you mean {loose}?")


def _networks(value: object) -> tuple[IPNetwork, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise _invalid(f"expected a list of addresses or ADDRESS/PREFIX, got {type(value).__name__}")
    return tuple(_one_network(item) for item in items)


_VERB = re.compile(r"[A-Za-z@]{1,16}")  # what alg.ftp.wire accepts as a verb


def _verbs(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise _invalid("expected a verb or a non-empty list of verbs, e.g. [DELE, RMD]")
    verbs = []
    for item in items:
        if not isinstance(item, str) or not _VERB.fullmatch(item.strip()):
            raise _invalid(f"{item!r} is not an FTP verb (1 to 16 letters)")
        verbs.append(item.strip().upper())
    return tuple(verbs)


def _pattern(value: object) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise _invalid("expected a regular expression as text")
    if len(value) > MAX_PATTERN_CHARS:
        raise _invalid(f"the pattern is longer than {MAX_PATTERN_CHARS} characters")
    try:
        # DOTALL: a stray CR in an argument must not let it slip past a deny pattern.
        return re.compile(value, re.DOTALL)
    except re.error as exc:
        raise _invalid(f"invalid regular expression: {exc.msg} at position {exc.pos}") from None


def _reply_text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("expected non-empty text")
    if len(value) > MAX_REPLY_TEXT or not all(" " <= char <= "~" for char in value):
        raise _invalid(f"reply text must be printable ASCII on one line, at most {MAX_REPLY_TEXT} characters")
    return value.strip()


_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _rule_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _invalid("a rule name is 1 to 64 letters, digits and _ . : -")
    return value


RuleName = Annotated[str, PlainValidator(_rule_name)]
Networks = Annotated[tuple[IPNetwork, ...], PlainValidator(_networks)]
Verbs = Annotated[tuple[str, ...], PlainValidator(_verbs)]
Pattern = Annotated[re.Pattern[str], PlainValidator(_pattern)]
ReplyText = Annotated[str, PlainValidator(_reply_text)]


# ---- the file format ------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class AclSection(_Strict):
    # null: every address (for data: none beyond the expected peer).
    allow: Networks | None = None
    deny: Networks = ()

    @field_validator("allow")
    @classmethod
    def _not_empty(cls, value: tuple[IPNetwork, ...] | None) -> tuple[IPNetwork, ...] | None:
        if value == ():
            raise _invalid("an empty allow list would refuse everyone; omit `allow` to allow every address")
        return value


class ClientsSection(AclSection):
    text: ReplyText | None = None  # after "421 "


class CommandRuleEntry(_Strict):
    name: RuleName | None = None
    allow: Verbs | None = None
    deny: Verbs | None = None
    # Matched against the whole argument (fullmatch), decoded as UTF-8 with undecodable bytes kept as surrogates.
    argument: Pattern | None = None
    code: Annotated[int, Field(strict=True)] | None = None
    text: ReplyText | None = None

    @model_validator(mode="after")
    def _one_action(self) -> CommandRuleEntry:
        if (self.allow is None) == (self.deny is None):
            raise _invalid("give exactly one of `allow: VERBS` or `deny: VERBS`")
        if self.allow is not None and (self.code is not None or self.text is not None):
            raise _invalid("`code` and `text` belong to deny rules; an allowed command gets the server's reply")
        if self.code is not None and not (400 <= self.code <= 599 and self.code != 421):
            # 421 tells the client the connection is closing, which a refused command does not do.
            raise _invalid(f"code must be a 4xx or 5xx reply other than 421, got {self.code}")
        return self


class CommandsSection(_Strict):
    # What happens to a command no rule matches. null: allow (unless another file says deny).
    default: Literal["allow", "deny"] | None = None
    max_argument_bytes: Annotated[int, Field(strict=True, ge=16, le=65536)] | None = None
    rules: tuple[CommandRuleEntry, ...] = ()


class RulesFile(_Strict):
    clients: ClientsSection = ClientsSection()
    data: AclSection = AclSection()
    destinations: AclSection = AclSection()
    commands: CommandsSection = CommandsSection()


# ---- the merged, compiled rule set ----------------------------------------------------------------------------


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class Acl:
    """Deny-overrides: an address passes if it is in `allow` (None: every address) and in no `deny` network.

    Chosen over first-match because lists from several files then combine without caring about their order."""

    allow: tuple[IPNetwork, ...] | None = None
    deny: tuple[IPNetwork, ...] = ()

    def permits(self, ip: IPAddress) -> bool:
        ip = _unmapped(ip)
        if any(ip in net for net in self.deny):
            return False
        return self.allow is None or any(ip in net for net in self.allow)


@dataclass(frozen=True, slots=True)
class CommandRule:
    name: str
    action: Literal["allow", "deny"]
    verbs: frozenset[str]
    pattern: re.Pattern[str] | None
    code: int
    text: str | None  # None: "<VERB> is not allowed through this gateway."


@dataclass(frozen=True, slots=True)
class RuleSet:
    clients: Acl = Acl()
    client_refusal_text: str = CLIENT_REFUSAL_TEXT
    data: Acl = Acl(allow=())
    destinations: Acl = Acl()
    commands: tuple[CommandRule, ...] = ()
    default_command: Literal["allow", "deny"] = "allow"
    max_argument_bytes: int = MAX_ARGUMENT_BYTES
    sources: tuple[str, ...] = ()
    _by_verb: Mapping[str, tuple[CommandRule, ...]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, list[CommandRule]] = {}
        for rule in self.commands:
            for verb in rule.verbs:
                index.setdefault(verb, []).append(rule)
        object.__setattr__(self, "_by_verb", {verb: tuple(rules) for verb, rules in index.items()})

    def check_command(self, command: Command) -> None:
        """Return if the command may pass; raise PolicyDenied with the reply to give otherwise."""
        verb = command.verb
        argument: str | None = None
        for rule in self._by_verb.get(verb, ()):
            if rule.pattern is not None:
                if argument is None:
                    if len(command.argument) > self.max_argument_bytes:
                        # Fail closed: a pattern that cannot be checked cannot allow or spare the command.
                        raise PolicyDenied(
                            f"{verb} argument too long for the gateway's policy (limit {self.max_argument_bytes}"
                            " bytes)",
                            reason=Refusal.COMMAND_RULE,
                            rule="command_rule:argument-length",
                            reply_code=501,
                        )
                    # Filenames may be any bytes: undecodable ones become surrogates instead of failing.
                    argument = command.argument.decode("utf-8", "surrogateescape")
                if rule.pattern.fullmatch(argument) is None:
                    continue
            if rule.action == "allow":
                return
            reply_text = rule.text or f"{verb} is not allowed through this gateway."
            raise PolicyDenied(
                reply_text, reason=Refusal.COMMAND_RULE, rule=f"command_rule:{rule.name}", reply_code=rule.code
            )
        if self.default_command == "deny":
            raise PolicyDenied(
                f"{verb} is not allowed by the gateway's policy.",
                reason=Refusal.COMMAND_RULE,
                rule="command_rule:default",
                reply_code=502,
            )

    def allows_client(self, ip: IPAddress) -> bool:
        return self.clients.permits(ip)

    def allows_data_peer(self, ip: IPAddress, expected: IPAddress) -> bool:
        """A data connection to or from `ip`, where FTP's own rules expect `expected` (the upstream for a
        passive reply, the control client for PORT/EPRT): a third party passes only if `data` allows it."""
        return _unmapped(ip) == _unmapped(expected) or (self.data.allow is not None and self.data.permits(ip))

    @classmethod
    def merge(cls, files: Iterable[tuple[str, RulesFile]]) -> RuleSet:
        """One rule set from files in order: ACL lists add up, command rules follow each other in file order,
        and for a single value (commands.default, clients.text) the last file that gives it wins."""
        allow: dict[str, list[IPNetwork] | None] = {"clients": None, "data": None, "destinations": None}
        deny: dict[str, list[IPNetwork]] = {"clients": [], "data": [], "destinations": []}
        commands: list[CommandRule] = []
        default: Literal["allow", "deny"] = "allow"
        max_argument = MAX_ARGUMENT_BYTES
        refusal = CLIENT_REFUSAL_TEXT
        sources = []
        for source, rules in files:
            sources.append(source)
            for key in allow:
                section: AclSection = getattr(rules, key)
                if section.allow is not None:
                    allow[key] = [*(allow[key] or []), *section.allow]
                deny[key].extend(section.deny)
            refusal = rules.clients.text or refusal
            default = rules.commands.default or default
            max_argument = rules.commands.max_argument_bytes or max_argument
            label = os.path.basename(source)
            for number, entry in enumerate(rules.commands.rules):
                commands.append(_compile(entry, f"{label}:commands.rules[{number}]"))

        def acl(key: str, absent: tuple[IPNetwork, ...] | None) -> Acl:
            given = allow[key]
            return Acl(tuple(given) if given is not None else absent, tuple(deny[key]))

        return cls(
            clients=acl("clients", None),
            client_refusal_text=refusal,
            data=acl("data", ()),
            destinations=acl("destinations", None),
            commands=tuple(commands),
            default_command=default,
            max_argument_bytes=max_argument,
            sources=tuple(sources),
        )


def _compile(entry: CommandRuleEntry, default_name: str) -> CommandRule:
    action: Literal["allow", "deny"] = "allow" if entry.allow is not None else "deny"
    verbs = entry.allow if entry.allow is not None else entry.deny
    assert verbs is not None  # the model allows exactly one of them
    if entry.argument is None:
        code, text = VERB_RULE_CODE, None
    else:
        code, text = PATH_RULE_CODE, "Permission denied by the gateway's policy."
    return CommandRule(
        name=entry.name or default_name,
        action=action,
        verbs=frozenset(verbs),
        pattern=entry.argument,
        code=entry.code if entry.code is not None else code,
        text=entry.text if entry.text is not None else text,
    )


# The policy when the settings list no rule files; rules/default.yaml says the same, with comments.
BUILTIN: Mapping[str, Any] = {
    "commands": {
        "rules": [
            {
                "name": "site-exec",
                "deny": "SITE",
                "argument": r"(?i)\s*EXEC(\s.*)?",
                "code": 502,
                "text": "SITE EXEC is not allowed through this gateway.",
            },
            {
                "name": "site-copy",
                "deny": "SITE",
                "argument": r"(?i)\s*CP(FR|TO)(\s.*)?",
                "code": 502,
                "text": "SITE CPFR/CPTO is not allowed through this gateway.",
            },
        ]
    }
}


def load_rules(paths: Sequence[str | os.PathLike[str]]) -> RuleSet:
    """The rule set from `paths` in order (no paths: the built-in policy), or ConfigError naming file and line."""
    if not paths:
        return RuleSet.merge([("<built-in>", RulesFile.model_validate(BUILTIN))])
    files = [(os.fspath(path), load_yaml_model(path, RulesFile, what="rules")) for path in paths]
    return RuleSet.merge(files)


# ---- the gateway's own addresses (a redirected connection to one of them would loop) ----------------------------


def is_own_address(ip: IPAddress) -> bool:
    """True if `ip` is an address of this host (in this network namespace). Sends nothing: a UDP connect only
    asks the kernel for a route, and the route to a local address has that same address as its source."""
    ip = _unmapped(ip)
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if isinstance(ip, IPv6Address) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(ip), 9))
            source = probe.getsockname()[0]
        except OSError:
            return False  # no route at all: not ours
    return ip_address(source.split("%", 1)[0]) == ip


# ---- the holder the gateway uses --------------------------------------------------------------------------------


class Policy:
    """The current RuleSet of a gateway, replaced whole by reload(); every check reads the current one, so
    running sessions follow new rules from their next command on."""

    def __init__(
        self,
        paths: Sequence[Path] = (),
        rules: RuleSet | None = None,
        *,
        own_addresses: Iterable[IPAddress] = (),
        is_own: Callable[[IPAddress], bool] = is_own_address,
    ) -> None:
        self.paths = tuple(paths)
        self.rules = rules if rules is not None else load_rules(self.paths)
        # Addresses that are ours without being on an interface (a public address a NAT in front maps to us).
        self.own_addresses = frozenset(_unmapped(ip) for ip in own_addresses if not ip.is_unspecified)
        self._is_own = is_own

    def adopt(self, fresh: Policy) -> None:
        """A reload's rules and addresses (read and checked by alg.gateway.reload): taken in place, so every
        holder of the check_command hook applies them from its next command on."""
        self.paths, self.rules, self.own_addresses = fresh.paths, fresh.rules, fresh.own_addresses

    # The ChannelSettings.check_command hook: called for every client command.
    def check_command(self, command: Command) -> None:
        self.rules.check_command(command)

    def allows_client(self, ip: IPAddress) -> bool:
        return self.rules.allows_client(ip)

    @property
    def client_refusal_text(self) -> str:
        return self.rules.client_refusal_text

    def allows_data_peer(self, ip: IPAddress, expected: IPAddress) -> bool:
        return self.rules.allows_data_peer(ip, expected)

    def check_destination(self, ip: IPAddress) -> None:
        """Transparent mode: raise PolicyDenied (reply 421) unless LAN clients may reach `ip`."""
        ip = _unmapped(ip)
        if ip in self.own_addresses or self._is_own(ip):
            raise PolicyDenied(
                f"Refused: {ip} is this gateway itself; connecting would loop.", reason=Refusal.ACL, reply_code=421
            )
        if not self.rules.destinations.permits(ip):
            raise PolicyDenied(
                f"Access to {ip} is not allowed by the gateway's policy.", reason=Refusal.ACL, reply_code=421
            )

    def allowed_destination(self, ip: IPAddress) -> bool:
        try:
            self.check_destination(ip)
        except PolicyDenied:
            return False
        return True
