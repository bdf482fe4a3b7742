"""A minimal WebSocket client for the liveness test, stdlib only (python3 has no WebSocket
client): it connects, sends one `execute`, prints every text frame on its own line, answers
pings with pongs, and prints `closed` on a close frame. The test SIGSTOPs it mid-stream, so
that only the server's pong deadline can tell that it is gone (its kernel still ACKs).

usage: ws_client.py HOST PORT PATH TOKEN CODE
"""

import base64
import json
import os
import socket
import struct
import sys

host, port, path, token, code = sys.argv[1:6]
sock = socket.create_connection((host, int(port)))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(
    (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
)
stream = sock.makefile("rb")
status = stream.readline()
if b" 101 " not in status:
    sys.exit(f"upgrade refused: {status!r}")
while stream.readline() not in (b"\r\n", b""):
    pass


def send(opcode, payload):
    """One masked frame (a client must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def read_exact(n):
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return data


send(1, json.dumps({"type": "execute", "id": "stream", "code": code}).encode())
try:
    while True:
        b0, b1 = read_exact(2)
        opcode, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", read_exact(8))
        payload = read_exact(n)
        if opcode == 9:
            print("ping", flush=True)
            send(10, payload)
        elif opcode == 8:
            print("closed", flush=True)
            break
        elif opcode == 1:
            print(payload.decode(), flush=True)
except EOFError:
    print("eof", flush=True)
