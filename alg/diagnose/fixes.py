"""The fixes for what the reasoning found, ranked for this case, with the exact lines to paste.

Rules: pure; every address in a line comes from the observations (or is a named placeholder in capitals when
the probe cannot know it); the ftp-alg command lines are the ones `ftp-alg run` accepts, so they can be
started as printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal

from alg.diagnose.observations import Control, HostPort, IPAddress

# The range every fix suggests, on the server and for ftp-alg alike: ftp-alg's own default.
PASSIVE_RANGE = (50000, 50999)
TRANSPARENT_PORT = 2121  # ftp-alg's control port on a NAT box (ALG_PORT in ftp-alg-transparent.nft)
# The files an FTPS fix needs and only the user has: named placeholders, explained in the fix's note.
TLS_CERT, TLS_KEY, SERVER_CA, SERVER_NAME = "CERT.pem", "KEY.pem", "SERVER_CA.pem", "SERVER_NAME"

FixKind = Literal["client", "server", "firewall", "kernel helper", "ftp-alg"]


@dataclass(frozen=True)
class Fix:
    kind: FixKind
    title: str
    lines: tuple[str, ...]  # configuration lines and commands, to paste
    note: str = ""
    command: str = ""  # for ftp-alg: the `ftp-alg run ...` line alone


@dataclass
class Problems:
    """What the reasoning found, in the terms the fixes need (filled in while the modes are analysed)."""

    control: Control
    default_gateway: IPAddress | None = None
    internal: IPAddress | None = None  # --internal-address
    announced: HostPort | None = None  # a 227 address that is not the control peer's
    server_side: bool = False  # passive fails in front of the server (scenarios 1, 2)
    address_differs: bool = False  # scenario 1
    range_blocked: bool = False  # scenario 2
    client_side: bool = False  # active fails in front of this client (scenarios 3, 4)
    tls: bool = False  # a failing mode ran under TLS
    helper_blind_under_tls: bool = False
    passive_works: bool = False
    active_works: bool = False

    def notes(self) -> list[str]:
        notes: list[str] = []
        if self.tls and (self.server_side or self.client_side):
            notes.append(
                "The kernel FTP helper (nf_conntrack_ftp, nf_nat_ftp) is no fix under TLS: it cannot read the"
                " encrypted PORT, 227 and 229."
            )
        return notes


def ranked_fixes(problems: Problems) -> list[Fix]:
    fixes: list[Fix] = []
    if problems.server_side:
        fixes.append(_server_settings(problems))
        fixes.append(_gateway_reverse(problems))
        if not problems.tls:
            fixes.append(_kernel_helper(problems, where="on the NAT box or firewall in front of the server"))
    if problems.client_side:
        if problems.passive_works:
            fixes.append(
                Fix(
                    "client",
                    "Use passive mode in the client: it works from here",
                    (
                        "curl: the default (EPSV, then PASV); not -P/--ftp-port",
                        "lftp: set ftp:passive-mode on",
                        "FileZilla: Settings > FTP > Passive",
                    ),
                )
            )
        fixes.append(_gateway_transparent(problems))
        if not problems.tls:
            fixes.append(_kernel_helper(problems, where="on this client's NAT box or firewall"))
    return fixes


def _range(sep: str) -> str:
    return f"{PASSIVE_RANGE[0]}{sep}{PASSIVE_RANGE[1]}"


def _server_settings(problems: Problems) -> Fix:
    public = problems.control.server
    lines: list[str] = []
    if problems.address_differs:
        title = "On the server: announce the address clients connect to, and a fixed passive range"
        lines += [
            f"vsftpd.conf:  pasv_address={public}  pasv_min_port={PASSIVE_RANGE[0]}  pasv_max_port={PASSIVE_RANGE[1]}",
            f"proftpd.conf: MasqueradeAddress {public}  PassivePorts {_range(' ')}",
            f"pure-ftpd:    -P {public} -p {_range(':')}",
        ]
    else:
        title = "On the server: a fixed passive range, opened on the firewall"
        lines += [
            f"vsftpd.conf:  pasv_min_port={PASSIVE_RANGE[0]}  pasv_max_port={PASSIVE_RANGE[1]}",
            f"proftpd.conf: PassivePorts {_range(' ')}",
            f"pure-ftpd:    -p {_range(':')}",
        ]
    internal = _internal(problems)
    if internal is not None:
        lines.append(
            f"NAT box (nftables, in its dstnat chain): ip daddr {public} tcp dport {_range('-')} dnat ip to {internal}"
        )
    lines.append(f"firewall (nftables, forward chain): tcp dport {_range('-')} ct state new accept")
    note = "Fixes passive at the source, for every client; FTPS included, since the server writes the address."
    return Fix("server", title, tuple(lines), note)


def _internal(problems: Problems) -> IPAddress | None:
    if problems.announced is not None:
        return problems.announced.ip
    return problems.internal


def _gateway_reverse(problems: Problems) -> Fix:
    control = problems.control
    public = control.server
    internal = _internal(problems)
    upstream = str(HostPort(internal, control.port)) if internal is not None else f"INTERNAL_ADDRESS:{control.port}"
    command = (
        f"ftp-alg run --listen {HostPort(public, control.port) if public is not None else control.host}"
        f" --upstream {upstream} --public-address {public} --passive-ports {_range('-')}"
    )
    note = (
        f"On the host that owns {public} (the NAT box or firewall in front of the server), in place of its"
        f" port-{control.port} forward; accept {_range('-')} in its input chain. Nothing changes on the server or"
        " the clients; active mode and other control ports work too."
    )
    if problems.tls:
        name = control.host if _is_name(control.host) else SERVER_NAME
        command += (
            f" --tls-client allow --tls-cert {TLS_CERT} --tls-key {TLS_KEY}"
            f" --tls-upstream auto --tls-upstream-ca-file {SERVER_CA} --tls-upstream-server-name {name}"
        )
        note += (
            " ftp-alg terminates TLS, so it can rewrite the 227 inside it: it is the TLS server toward the clients"
            " and a TLS client toward the server. To provide:"
            f" {TLS_CERT} and {TLS_KEY}, a certificate for {control.host} that the clients trust, and its key (the"
            f" server's own will do); {SERVER_CA}, the CA that signed the server's certificate (drop the flag if"
            " this host's system CAs trust it)"
        )
        note += "." if name != SERVER_NAME else f"; {SERVER_NAME}, the name in the server's certificate."
    if internal is None:
        note += " INTERNAL_ADDRESS: the server's own address behind that host (--internal-address fills it in)."
    return Fix("ftp-alg", "ftp-alg in front of the server (reverse mode)", (command,), note, command)


def _gateway_transparent(problems: Problems) -> Fix:
    gateway = str(problems.default_gateway) if problems.default_gateway is not None else "LAN_ADDRESS"
    command = f"ftp-alg run --mode transparent --listen {gateway}:{TRANSPARENT_PORT} --passive-ports {_range('-')}"
    port = problems.control.port
    lines = [command, "nft -f deploy/nftables/ftp-alg-transparent.nft   (LAN_IF and WAN_IF set at its top)"]
    note = (
        f"On this client's NAT box ({gateway}, this host's default gateway): it rewrites PORT/EPRT to the box's"
        " public address and relays the data, so the server sees control and data from one address."
    )
    if port != 21:
        note += f" The server's port is {port}: add a redirect line for tcp dport {port} in that file."
    if problems.tls:
        host = problems.control.host
        name = f" --tls-upstream-server-name {host}" if _is_name(host) else ""
        command += f" --tls-client allow --tls-cert {TLS_CERT} --tls-key {TLS_KEY} --tls-upstream auto{name}"
        lines[0] = command
        note += (
            " ftp-alg terminates TLS, so it can rewrite PORT/EPRT inside it: toward the LAN it answers in the"
            f" server's place. To provide: {TLS_CERT} and {TLS_KEY}, a certificate for {host} and its key, from a"
            " CA the LAN's clients trust (a local CA installed on them); --tls-upstream-ca-file when the server's"
            " certificate is not from a CA this box's system trusts."
        )
        if name:
            note += (
                " --tls-upstream-server-name applies to every server this box relays: drop it if"
                f" {host} is not the only one."
            )
    return Fix("ftp-alg", "ftp-alg on the client's NAT box (transparent mode)", tuple(lines), note, command)


def _is_name(host: str) -> bool:
    """A host name (what a certificate names), not an address literal."""
    try:
        ip_address(host)
    except ValueError:
        return True
    return False


def helper_table(port: int) -> tuple[str, ...]:
    """nftables lines that attach the kernel FTP helper to control connections to `port`."""
    return (
        "table inet ftp_helper {",
        '    ct helper ftp { type "ftp" protocol tcp; }',
        "    chain attach {",
        "        type filter hook prerouting priority filter; policy accept;",
        f'        tcp dport {port} ct helper set "ftp"',
        "    }",
        "}",
    )


def _kernel_helper(problems: Problems, *, where: str) -> Fix:
    port = problems.control.port
    lines = (*helper_table(port), "and in the forward chain: ct state established,related accept")
    note = (
        f"The Linux helper (nf_conntrack_ftp, nf_nat_ftp), {where}. Its limits: it watches only the port it is"
        f" attached to ({port} here), it is blind under TLS, and since Linux 4.7 it does nothing until attached"
        ' explicitly (ct helper set "ftp").'
    )
    return Fix("kernel helper", "The kernel FTP helper", lines, note)
