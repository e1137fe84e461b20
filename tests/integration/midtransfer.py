"""A raw FTP client that sends one command while a transfer runs and records every reply line in order.

Runs inside a namespace (`host.run([python, "-c", CLIENT], input=json spec)`), prints one JSON object:
`events` is the list of ["reply", line] and ["mark", what] in the order they happened ("sent" when the
mid-transfer command went, "data_end" when the client finished its side of the data connection: drained
the download to its end, or closed the upload), `sha256` what arrived (download) or was sent (upload).
With `tls` the control connection goes through AUTH TLS, PBSZ 0, PROT P and the data connection is TLS,
resuming the control session (vsftpd requires it).
"""

from __future__ import annotations

CLIENT = r"""
import hashlib, json, re, select, socket, ssl, sys, time
spec = json.load(sys.stdin)
events = []
control = socket.create_connection((spec["host"], spec["port"]), timeout=10)
control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
context = None
buffer = b""
lines_seen = []

def lines(timeout):
    # Whole lines as they come, until `timeout` passes with nothing new, or the connection ends (None).
    global buffer
    out = []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            out.append(line.decode("latin-1").rstrip("\r"))
        left = deadline - time.monotonic()
        if left <= 0:
            return out, True
        control.settimeout(left)
        try:
            chunk = control.recv(65536)
        except (TimeoutError, socket.timeout):
            return out, True
        except (ConnectionError, ssl.SSLError, OSError):
            return out, False
        if not chunk:
            return out, False
        buffer += chunk

def reply(timeout=10.0):
    # The next final reply's last line (multi-line bodies skipped).
    global buffer
    control.settimeout(timeout)
    first = None
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode("latin-1").rstrip("\r")
            if first is None and re.match(r"\d{3}-", text):
                first = text[:3]
            elif re.match(r"\d{3} ", text) and (first is None or text[:3] == first):
                return text
        chunk = control.recv(4096)
        if not chunk:
            raise EOFError("control connection closed")
        buffer += chunk

def command(line):
    control.sendall(line.encode() + b"\r\n")
    return reply()

def secure_data(sock):
    if not spec["tls"]:
        return sock
    return context.wrap_socket(sock, server_hostname=None, session=control.session)

banner = reply()
if spec["tls"]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is there at once (no late ticket)
    assert command("AUTH TLS").startswith("234")
    control = context.wrap_socket(control, server_hostname=None)
    assert command("PBSZ 0").startswith("200")
    assert command("PROT P").startswith("200")
assert command("USER " + spec["user"]).startswith("331")
assert command("PASS " + spec["password"]).startswith("230")
assert command("TYPE I").startswith("200")
download = spec["direction"] == "download"
verb = "RETR " + spec["file"] if download else "STOR " + spec["file"]
listener = None
if spec["passive"]:
    got = command("PASV")
    numbers = [int(n) for n in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", got).groups()]
    data = socket.create_connection((".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]), timeout=10)
    # A round trip first: the server has taken the data connection before the transfer command (pyftpdlib
    # otherwise answers 150 or 125 depending on which it read first; through the gateway it is always taken).
    assert command("NOOP").startswith("200")
    control.sendall(verb.encode() + b"\r\n")
else:
    listener = socket.create_server((control.getsockname()[0], 0))
    host, port = listener.getsockname()
    assert command("PORT " + ",".join(host.split(".") + [str(port >> 8), str(port & 255)])).startswith("200")
    control.sendall(verb.encode() + b"\r\n")
    listener.settimeout(10)
    data, _ = listener.accept()
    listener.close()
first = reply()
events.append(["reply", first])
data = secure_data(data)
data.settimeout(10)
digest = hashlib.sha256()
block = bytes(range(256)) * 256
if download:
    got = 0
    while got < spec["before"]:
        chunk = data.recv(min(65536, spec["before"] - got))
        if not chunk:
            break
        got += len(chunk)
        digest.update(chunk)
else:
    sent = 0
    while sent < spec["before"]:
        data.sendall(block)
        digest.update(block)
        sent += len(block)
open_ = True
for line in spec["commands"]:
    control.sendall(line.encode() + b"\r\n")
    events.append(["mark", "sent " + line.split()[0]])
    got, open_ = lines(spec["wait"])
    events.extend(["reply", text] for text in got)
    if not open_:
        events.append(["mark", "control_closed"])
        break
if spec["early_close"]:
    if spec["tls"] and not download:
        try:
            data = data.unwrap()  # an upload ended early but cleanly (close_notify): a shorter file
        except (OSError, ssl.SSLError):
            pass
    data.close()  # a download: dropped, as a client that has read enough does
    events.append(["mark", "data_closed"])
elif download:
    try:
        while True:
            chunk = data.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
    except (OSError, ssl.SSLError) as error:
        events.append(["mark", "data_error " + type(error).__name__])
    data.close()
    events.append(["mark", "data_end"])
else:
    try:
        for _ in range(spec["after_blocks"]):
            data.sendall(block)
            digest.update(block)
        if spec["tls"]:
            data = data.unwrap()
        events.append(["mark", "data_end"])
    except (OSError, ssl.SSLError) as error:
        events.append(["mark", "data_error " + type(error).__name__])
    data.close()
if open_:
    got, open_ = lines(spec["settle"])
    events.extend(["reply", text] for text in got)
    if not open_:
        events.append(["mark", "control_closed"])
if open_ and spec["then"]:
    control.sendall(spec["then"].encode() + b"\r\n")
    events.append(["mark", "sent " + spec["then"].split()[0]])
    got, open_ = lines(spec["settle"])
    events.extend(["reply", text] for text in got)
print(json.dumps({"events": events, "sha256": digest.hexdigest()}))
"""


# Runs inside a namespace: a session of idle commands and small passive downloads, each step's final reply
# recorded (and the sha256 of what a RETR brought). For REIN and a second login, plain and TLS.
SESSION_CLIENT = r"""
import hashlib, json, re, socket, ssl, sys
spec = json.load(sys.stdin)
control = socket.create_connection((spec["host"], spec["port"]), timeout=10)
buffer = b""

def reply():
    global buffer
    first = None
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode("latin-1").rstrip("\r")
            if first is None and re.match(r"\d{3}-", text):
                first = text[:3]
            elif re.match(r"\d{3} ", text) and (first is None or text[:3] == first):
                return text
        chunk = control.recv(4096)
        if not chunk:
            return "<closed>"
        buffer += chunk

def command(line):
    control.sendall(line.encode() + b"\r\n")
    return reply()

steps = [["<banner>", reply()]]
context = None
if spec["tls"]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    steps.append(["AUTH TLS", command("AUTH TLS")])
    control = context.wrap_socket(control, server_hostname=None)
for line in spec["steps"]:
    line = line.replace("$USER", spec["user"]).replace("$PASS", spec["password"])
    if not line.startswith("RETR "):
        steps.append([line.split()[0], command(line)])
        continue
    got = command("PASV")
    steps.append(["PASV", got[:3]])
    if not got.startswith("227"):
        continue
    numbers = [int(n) for n in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", got).groups()]
    data = socket.create_connection((".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]), timeout=10)
    first = command(line)
    digest = hashlib.sha256()
    if first[:1] == "1":
        if context is not None and spec["protected"]:
            data = context.wrap_socket(data, server_hostname=None, session=control.session)
        while chunk := data.recv(1 << 16):
            digest.update(chunk)
        data.close()
        steps.append(["RETR", first[:3], reply(), digest.hexdigest()])
    else:
        data.close()
        steps.append(["RETR", first])
print(json.dumps(steps))
"""
