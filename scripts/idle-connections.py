#!/usr/bin/env python3
"""idle-connections.py - what idle connections cost brokerd, and whether the memory comes back.

Starts nothing: point it at a running brokerd (its PID for RSS readings, its port on 127.0.0.1). Opens COUNT
connections, completes the handshake on each (hello, authenticate as guest), leaves them idle, reads the broker's
RSS, closes them all, waits for the broker to see every close, and reads RSS again.

    scripts/idle-connections.py --pid $(pgrep -n brokerd) --port 5680 --count 2000

Every connection goes to 127.0.0.1 and is closed before the script exits. Frames follow docs/protocol.md §3-4.
"""
import argparse
import socket
import struct
import time


def frame(kind, payload):
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def shortstr(text):
    data = text.encode()
    return struct.pack(">B", len(data)) + data


def read_frame(sock):
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    (length,) = struct.unpack(">I", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        body += chunk
    return body[0], body[1:]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connections_seen(pid):
    # Sockets the process holds (listener included): how many connections it has not yet closed.
    import os
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--port", type=int, default=5680)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    args = parser.parse_args()

    hello = b"BRKD" + frame(0x01, struct.pack(">BH", 1, 0x0100) + shortstr("idle"))
    auth = frame(0x02, shortstr("PLAIN") + shortstr(args.user) + shortstr(args.password) + struct.pack(">IH", 0, 0))
    baseline_sockets = connections_seen(args.pid)
    before = rss_kib(args.pid)
    sockets = []
    start = time.monotonic()
    for _ in range(args.count):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        sock.sendall(hello)
        kind, _ = read_frame(sock)
        assert kind == 0x81, f"expected helloOk, got 0x{kind:02x}"
        sock.sendall(auth)
        kind, payload = read_frame(sock)
        assert kind == 0x82, f"expected authOk, got 0x{kind:02x}: {payload!r}"
        sockets.append(sock)
    opened = time.monotonic() - start
    time.sleep(1)  # let the broker finish what the handshakes started
    idle = rss_kib(args.pid)
    for sock in sockets:
        sock.close()
    deadline = time.monotonic() + 60
    while connections_seen(args.pid) > baseline_sockets and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(12)  # the sweeper returns freed memory to the system at most every 10 s
    after = rss_kib(args.pid)
    per = (idle - before) * 1024 / args.count
    print(f"RESULT count={args.count} open_secs={opened:.1f} rss_before_kib={before} rss_idle_kib={idle} "
          f"rss_after_close_kib={after} per_connection_bytes={per:.0f}")


if __name__ == "__main__":
    main()
