#!/usr/bin/env python3
"""Writes (or, with --check, verifies) Tests/Fixtures/amqp-methods.json: every AMQP 0-9-1 method as pika encodes it.

pika (an independent AMQP client, from PyPI) encodes each method with sample arguments; the Swift suite
(AMQPWireTests) reads the same bytes with AMQPWire and must get the same arguments, and must write the same bytes.
The sample values follow each argument's type in RabbitMQ's spec (read from pika's own definitions). CI runs
--check (`pip install pika` if missing), so the fixture cannot drift from what a real client sends.
"""
import inspect
import json
import pathlib
import struct
import sys

import pika.spec as spec

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "Tests/Fixtures/amqp-methods.json"

# The argument types, by name as pika spells them, from the 0-9-1 spec's domains.
TYPES = {
    "version_major": "octet", "version_minor": "octet", "server_properties": "table", "mechanisms": "longstr", "locales": "longstr",
    "client_properties": "table", "mechanism": "shortstr", "response": "longstr", "locale": "shortstr", "challenge": "longstr",
    "channel_max": "short", "frame_max": "long", "heartbeat": "short", "virtual_host": "shortstr", "capabilities": "shortstr",
    "insist": "bit", "known_hosts": "shortstr", "reply_code": "short", "reply_text": "shortstr", "class_id": "short",
    "method_id": "short", "reason": "shortstr", "out_of_band": "shortstr", "channel_id": "longstr", "active": "bit",
    "ticket": "short", "exchange": "shortstr", "type": "shortstr", "exchange_type": "shortstr", "passive": "bit", "durable": "bit",
    "auto_delete": "bit", "internal": "bit", "nowait": "bit", "arguments": "table", "if_unused": "bit", "destination": "shortstr",
    "source": "shortstr", "routing_key": "shortstr", "queue": "shortstr", "exclusive": "bit", "message_count": "long",
    "consumer_count": "long", "if_empty": "bit", "prefetch_size": "long", "prefetch_count": "short", "global_qos": "bit",
    "consumer_tag": "shortstr", "no_local": "bit", "no_ack": "bit", "mandatory": "bit", "immediate": "bit",
    "new_secret": "longstr", "delivery_tag": "longlong", "redelivered": "bit", "cluster_id": "shortstr", "multiple": "bit", "requeue": "bit",
}


def sample(name, kind, index):
    return {"octet": index + 1, "short": 1000 + index, "long": 100000 + index, "longlong": (1 << 40) + index,
            "shortstr": f"s-{name}", "longstr": f"l-{name}", "bit": index % 2 == 0, "table": {"k": "v"}}[kind]


def generate():
    entries = []
    for index_, cls in sorted(spec.methods.items()):
        class_id, method_id = index_ >> 16, index_ & 0xFFFF
        if class_id == 30:  # access: deprecated, not served
            continue
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        args = {}
        for i, p in enumerate(params):
            if p not in TYPES:
                raise SystemExit(f"{cls.NAME}: argument {p} has no known type")
            args[p] = sample(p, TYPES[p], i)
        payload = struct.pack(">HH", class_id, method_id) + b"".join(cls(**args).encode())
        # Arguments in pika's order (the specification's), as [name, value] pairs; the Swift side compares by position.
        entries.append({"pika": cls.NAME, "arguments": [[k, v] for k, v in args.items()], "hex": payload.hex()})
    return entries


entries = generate()
text = json.dumps(entries, indent=1, sort_keys=True) + "\n"
if "--check" in sys.argv:
    if FIXTURE.read_text() != text:
        print(f"{FIXTURE}: differs from what pika encodes; regenerate with scripts/amqp-method-fixtures.py")
        sys.exit(1)
    print(f"amqp-methods: {len(entries)} methods as pika encodes them")
else:
    FIXTURE.write_text(text)
    print(f"wrote {FIXTURE} ({len(entries)} methods)")
