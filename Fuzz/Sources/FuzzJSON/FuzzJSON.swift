import BrokerCore
import FuzzSupport
import Foundation
import WireProtocol

/// The schema every parsed input is checked against: one of each kind of keyword the checker has, with refs.
let schema: JSONSchema = {
    let text = #"""
        {"type": ["object", "array", "string", "number", "boolean", "null"],
         "properties": {"a": {"$ref": "#/$defs/node"}, "b": {"enum": [1, "x", null, [1, {"k": true}]]},
                        "c": {"type": "string", "pattern": "^[a-z]+[0-9]*$", "minLength": 1, "maxLength": 8}},
         "patternProperties": {"^x-": {"not": {"type": "null"}}},
         "additionalProperties": {"anyOf": [{"type": "integer", "multipleOf": 3}, {"type": "array", "uniqueItems": true, "maxItems": 4}]},
         "propertyNames": {"maxLength": 16}, "minProperties": 0, "maxProperties": 20,
         "items": {"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "number", "maximum": 0}, {"const": {"z": [1]}}]},
         "contains": true,
         "if": {"required": ["t"]}, "then": {"required": ["u"]}, "else": {"not": {"required": ["u"]}},
         "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}}}}}
        """#
    do {
        return try JSONSchema(try JSONValue.parse(text))
    } catch {
        fatalError("the harness's own schema does not compile: \(error)")
    }
}()

/// One input: the bytes as a message body. Parse errors are expected; a parsed value must write back to text
/// that parses to the same value, the fixed schema's check must return (match or a failure with a path), and the
/// value compiled as a schema itself (both dialects) must either compile or be refused with an error. Traps,
/// hangs and unbounded memory are findings.
func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let value = try? JSONValue.parse(bytes) else { return 0 }
    guard let again = try? JSONValue.parse(value.jsonText), again == value else {
        fatalError("\(value.jsonText) does not parse back to the same value")
    }
    _ = schema.check(value)
    for dialect in [JSONSchema.Dialect.common, .draft07] {
        if let compiled = try? JSONSchema(value, dialect: dialect) { _ = compiled.check(value) }
    }
    return 0
}

/// libFuzzer runs the input function (`-help=1` lists its options).
@main
struct FuzzJSONMain {
    static func main() { runLibFuzzer { fuzzJSON($0, $1) } }
}

/// The symbol libFuzzer's runtime refers to (its whole archive is linked); the same input function.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSONEntry(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzJSON(data, size) }
