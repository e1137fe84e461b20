"""Which data-connection verb the server gets for the one the client sent: translation between the forms and
families of RFC 959 (PASV/PORT, IPv4 only) and RFC 2428 (EPSV/EPRT, any family), as RFC 6384 section 7 asks
of a gateway.

Rules: the client always gets the reply its own command asked for (the control channel writes a 227 for PASV
and a 229 for EPSV, whatever the server answered); the server gets the client's verb when it can take it, else
the other form: EPSV/EPRT toward an IPv6 server (PASV/PORT cannot name its addresses), PASV/PORT toward an IPv4
server known to lack EPSV/EPRT. What a server lacks is learned once per session, from its FEAT reply or from a
500/502 to EPSV/EPRT (after which the command is retried in the RFC 959 form). Pure: no I/O.
"""

from __future__ import annotations

EXTENDED = {"PASV": "EPSV", "PORT": "EPRT"}
CLASSIC = {"EPSV": "PASV", "EPRT": "PORT"}
# RFC 959 4.2: 500 "command unrecognized", 502 "command not implemented". Other refusals are about the
# argument or the state, not the verb, and go to the client as they are.
_UNKNOWN_VERB = frozenset((500, 502))


class ServerFeatures:
    """What the session has learned about the upstream's support for EPSV and EPRT."""

    def __init__(self, *, server_ipv6: bool) -> None:
        self.server_ipv6 = server_ipv6
        # verb -> True (supported), False (lacking); absent: not known yet.
        self.known: dict[str, bool] = {}
        self._feat: set[str] | None = None  # features listed by a FEAT reply in progress

    def verb_for_server(self, client_verb: str) -> str:
        """The verb to send upstream in place of `client_verb` (PASV, EPSV, PORT or EPRT)."""
        if self.server_ipv6:
            return EXTENDED.get(client_verb, client_verb)
        classic = CLASSIC.get(client_verb)
        if classic is not None and self.known.get(client_verb) is False:
            return classic
        return client_verb

    def may_refuse(self, sent_verb: str) -> bool:
        """True while a refusal of `sent_verb` could still make us retry in the RFC 959 form: the client's next
        lines wait for its reply, so that the retry's reply keeps its place."""
        return sent_verb in CLASSIC and not self.server_ipv6 and sent_verb not in self.known

    def learn_refusal(self, sent_verb: str, code: int) -> str | None:
        """The verb to retry with after the server answered `code` to `sent_verb`, or None to pass it on."""
        if not self.may_refuse(sent_verb) or code not in _UNKNOWN_VERB:
            return None
        self.known[sent_verb] = False
        return CLASSIC[sent_verb]

    def learn_success(self, sent_verb: str, code: int) -> None:
        if sent_verb in CLASSIC and 200 <= code < 300:
            self.known[sent_verb] = True

    # ---- FEAT (RFC 2389): a multi-line 211 listing one feature a line, each line starting with a space ----

    def feat_line(self, line: bytes) -> None:
        if self._feat is None:
            self._feat = set()
        if line.startswith(b" "):
            words = line.split()
            if words:
                self._feat.add(words[0].decode("ascii", "replace").upper())

    def feat_done(self, code: int) -> None:
        listed, self._feat = self._feat or set(), None
        if code != 211:
            return  # no FEAT at all says nothing about EPSV
        for verb in CLASSIC:
            self.known.setdefault(verb, verb in listed)
