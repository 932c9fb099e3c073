#!/usr/bin/env python3
"""Checks Tests/Fixtures/json-schema-cases.json against Python's jsonschema.

brokerd's JSON Schema checker (Sources/BrokerCore/JSONSchema.swift) is tested on these cases by the Swift suite
(JSONSchemaTests). This script is the independent half: every case's expected verdict must be what jsonschema's
Draft7Validator and Draft202012Validator both say, so the Swift verdicts agree with a reference implementation
in both drafts. CI runs it (`pip install jsonschema` if missing). Exit 0 when all agree, 1 with a list otherwise.
"""
import json
import pathlib
import sys

import jsonschema

cases = json.loads((pathlib.Path(__file__).resolve().parent.parent / "Tests/Fixtures/json-schema-cases.json").read_text())
wrong = []
count = 0
for case in cases:
    for cls in (jsonschema.Draft7Validator, jsonschema.Draft202012Validator):
        cls.check_schema(case["schema"])
        validator = cls(case["schema"])
        for test in case["tests"]:
            count += 1
            verdict = validator.is_valid(test["data"])
            if verdict != test["valid"]:
                wrong.append(f"{case['description']}: {json.dumps(test['data'])} is {'valid' if verdict else 'invalid'} for {cls.__name__}, the fixture says {test['valid']}")
if wrong:
    print("\n".join(wrong))
    sys.exit(1)
print(f"json-schema-cases: {count} verdicts agree with jsonschema (draft-07 and 2020-12)")
