#!/usr/bin/env python3
"""Checks Tests/Fixtures/json-schema-cases.json (and -draft07-cases.json) against Python's jsonschema.

brokerd's JSON Schema checker (Sources/BrokerCore/JSONSchema.swift) is tested on these cases by the Swift suite
(JSONSchemaTests). This script is the independent half: every case's expected verdict must be what jsonschema's
Draft7Validator and Draft202012Validator both say, so the Swift verdicts agree with a reference implementation
in both drafts (the draft-07 file, for the checker's draft-07 dialect: Draft7Validator only). CI runs it (`pip install jsonschema` if missing). Exit 0 when all agree, 1 with a list otherwise.
"""
import json
import pathlib
import sys

import jsonschema

fixtures = pathlib.Path(__file__).resolve().parent.parent / "Tests/Fixtures"
wrong = []
count = 0
suites = [
    ("json-schema-cases.json", (jsonschema.Draft7Validator, jsonschema.Draft202012Validator)),
    ("json-schema-draft07-cases.json", (jsonschema.Draft7Validator,)),
]
for file, validators in suites:
    for case in json.loads((fixtures / file).read_text()):
        for cls in validators:
            cls.check_schema(case["schema"])
            validator = cls(case["schema"])
            for test in case["tests"]:
                count += 1
                verdict = validator.is_valid(test["data"])
                if verdict != test["valid"]:
                    wrong.append(f"{file}: {case['description']}: {json.dumps(test['data'])} is "
                                 f"{'valid' if verdict else 'invalid'} for {cls.__name__}, the fixture says {test['valid']}")
if wrong:
    print("\n".join(wrong))
    sys.exit(1)
print(f"json-schema cases: {count} verdicts agree with jsonschema")
