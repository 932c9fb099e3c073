#!/usr/bin/env python3
"""Validates AsyncAPI documents against the AsyncAPI 3.0.0 JSON Schema with Python's jsonschema.

The Swift suite (AsyncAPITests) checks exported documents with brokerd's own schema checker; this is the
independent half, on the documents the repository holds: the exporter's pinned output
(Tests/Fixtures/asyncapi-export.json) and the ride services' contracts (Sources/RideContracts/ride.asyncapi.json).
It also checks that the schema rejects a broken copy, so a vacuous pass cannot hide. CI runs it.
"""
import copy
import json
import pathlib
import sys

import jsonschema

root = pathlib.Path(__file__).resolve().parent.parent
schema = json.loads((root / "Tests/Fixtures/asyncapi-3.0.0.json").read_text())
validator = jsonschema.Draft7Validator(schema)
failed = False
documents = [root / "Tests/Fixtures/asyncapi-export.json", root / "Sources/RideContracts/ride.asyncapi.json"]
for path in documents:
    document = json.loads(path.read_text())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    for error in errors[:10]:
        print(f"{path.relative_to(root)}: /{'/'.join(map(str, error.path))}: {error.message}")
    failed |= bool(errors)
    broken = copy.deepcopy(document)
    broken["operations"] = {"bad": {"action": "publish", "channel": {"$ref": "#/channels/x"}}}
    if validator.is_valid(broken):
        print(f"{path.relative_to(root)}: a copy with an invalid operation passed: the check is vacuous")
        failed = True
if failed:
    sys.exit(1)
print(f"asyncapi: {len(documents)} documents valid against AsyncAPI 3.0.0")
