public import NIOCore

/// A JSON value: what a contract's schemas are made of, and what a message body is parsed into when its type
/// validates against one (docs/contracts.md, "Schemas").
///
/// Numbers are `Double`s, as JavaScript and most JSON Schema implementations read them: integers beyond 2^53 lose
/// precision, and `1` and `1.0` are the same value.
public enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The object's members, or nil if this is not an object.
    public var objectValue: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    /// The string, or nil if this is not a string.
    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The name JSON Schema gives this value's type (`integer` for a number without a fraction).
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number(let n): n.rounded() == n && n.isFinite ? "integer" : "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    /// A short rendering for error texts: scalars in full, containers by their size.
    public var summary: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .number(let n): Self.format(n)
        case .string(let s): s.count <= 40 ? "\"\(s)\"" : "\"\(s.prefix(37))...\""
        case .array(let items): "an array of \(items.count)"
        case .object(let members): "an object with \(members.count) members"
        }
    }

    /// `3` rather than `3.0` for integral numbers.
    public static func format(_ n: Double) -> String {
        if n.rounded() == n, abs(n) < 1e15 { return "\(Int64(n))" }
        return "\(n)"
    }
}

extension JSONValue: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let b = try? container.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? container.decode(Double.self) {
            self = .number(n)
        } else if let s = try? container.decode(String.self) {
            self = .string(s)
        } else if let a = try? container.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let b): try container.encode(b)
        case .number(let n):
            if n.rounded() == n, abs(n) < 9.0e15 { try container.encode(Int64(n)) } else { try container.encode(n) }
        case .string(let s): try container.encode(s)
        case .array(let a): try container.encode(a)
        case .object(let o): try container.encode(o)
        }
    }
}

// MARK: - Parsing

extension JSONValue {
    /// Why a text is not JSON: what was wrong and at which byte offset.
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "\(reason) at byte \(offset)" }
    }

    /// The deepest nesting ``parse(_:)`` accepts: deeper input is refused rather than risking the stack.
    public static let maximumDepth = 128

    /// Parses one JSON text (RFC 8259), with nothing but whitespace after it. Strings must be valid UTF-8; a
    /// duplicate member name keeps the last value (as JavaScript and Python do).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ParseError) -> JSONValue {
        var parser = Parser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.offset == bytes.count else { throw parser.error("unexpected text after the JSON value") }
        return value
    }

    /// Parses the UTF-8 of `text`.
    public static func parse(_ text: String) throws(ParseError) -> JSONValue {
        var text = text
        var failure: ParseError?
        let value: JSONValue? = text.withUTF8 { buffer in
            do throws(ParseError) { return try parse(UnsafeRawBufferPointer(buffer)) } catch { failure = error; return nil }
        }
        guard let value else { throw failure ?? ParseError(offset: 0, reason: "unreadable") }
        return value
    }

    /// Parses the readable bytes of `buffer` (a message body) without copying them.
    public static func parse(_ buffer: ByteBuffer) throws(ParseError) -> JSONValue {
        var failure: ParseError?
        let value: JSONValue? = buffer.withUnsafeReadableBytes { bytes in
            do throws(ParseError) { return try parse(bytes) } catch { failure = error; return nil }
        }
        guard let value else { throw failure ?? ParseError(offset: 0, reason: "unreadable") }
        return value
    }

    private struct Parser {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        func error(_ reason: String) -> ParseError { ParseError(offset: offset, reason: reason) }

        var peek: UInt8? { offset < bytes.count ? bytes[offset] : nil }

        mutating func skipWhitespace() {
            while let b = peek, b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 { offset += 1 }
        }

        mutating func expect(_ literal: StaticString, _ value: JSONValue) throws(ParseError) -> JSONValue {
            let count = literal.utf8CodeUnitCount
            guard offset + count <= bytes.count else { throw error("truncated literal") }
            for i in 0..<count where bytes[offset + i] != literal.utf8Start[i] { throw error("invalid literal") }
            offset += count
            return value
        }

        mutating func value(depth: Int) throws(ParseError) -> JSONValue {
            guard depth < JSONValue.maximumDepth else { throw error("nested deeper than \(JSONValue.maximumDepth) levels") }
            guard let byte = peek else { throw error("unexpected end of input") }
            switch byte {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try expect("true", .bool(true))
            case UInt8(ascii: "f"): return try expect("false", .bool(false))
            case UInt8(ascii: "n"): return try expect("null", .null)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw error("unexpected character '\(Unicode.Scalar(byte))'")
            }
        }

        mutating func object(depth: Int) throws(ParseError) -> JSONValue {
            offset += 1
            // Members are collected first and the dictionary is made at its final size: growing it member by
            // member cost a third of the parse.
            var pairs: [(String, JSONValue)] = []
            skipWhitespace()
            if peek == UInt8(ascii: "}") {
                offset += 1
                return .object([:])
            }
            while true {
                skipWhitespace()
                guard peek == UInt8(ascii: "\"") else { throw error("expected a member name in quotes") }
                let name = try string()
                skipWhitespace()
                guard peek == UInt8(ascii: ":") else { throw error("expected ':' after a member name") }
                offset += 1
                skipWhitespace()
                pairs.append((name, try value(depth: depth + 1)))
                skipWhitespace()
                switch peek {
                case UInt8(ascii: ","): offset += 1
                case UInt8(ascii: "}"):
                    offset += 1
                    return .object(Dictionary(pairs, uniquingKeysWith: { _, last in last }))
                default: throw error("expected ',' or '}' in an object")
                }
            }
        }

        mutating func array(depth: Int) throws(ParseError) -> JSONValue {
            offset += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if peek == UInt8(ascii: "]") {
                offset += 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try value(depth: depth + 1))
                skipWhitespace()
                switch peek {
                case UInt8(ascii: ","): offset += 1
                case UInt8(ascii: "]"):
                    offset += 1
                    return .array(items)
                default: throw error("expected ',' or ']' in an array")
                }
            }
        }

        mutating func string() throws(ParseError) -> String {
            offset += 1
            let start = offset
            // Fast path: no escapes.
            while let b = peek, b != UInt8(ascii: "\""), b != UInt8(ascii: "\\") {
                guard b >= 0x20 else { throw error("control character in a string") }
                offset += 1
            }
            guard let stop = peek else { throw error("unterminated string") }
            if stop == UInt8(ascii: "\"") {
                let end = offset
                offset += 1
                let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
                // ASCII (the usual member name or value) needs no validation; anything else is checked.
                if !slice.contains(where: { $0 >= 0x80 }) { return String(decoding: slice.bindMemory(to: UInt8.self), as: UTF8.self) }
                guard let text = String(validating: slice, as: UTF8.self) else {
                    throw ParseError(offset: start, reason: "a string that is not valid UTF-8")
                }
                return text
            }
            var raw = Array(bytes[start..<offset])
            do {
                while true {
                    guard let b = peek else { throw error("unterminated string") }
                    offset += 1
                    if b == UInt8(ascii: "\"") { break }
                    if b < 0x20 { throw error("control character in a string") }
                    guard b == UInt8(ascii: "\\") else {
                        raw.append(b)
                        continue
                    }
                    guard let escaped = peek else { throw error("unterminated escape") }
                    offset += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): raw.append(escaped)
                    case UInt8(ascii: "b"): raw.append(0x08)
                    case UInt8(ascii: "f"): raw.append(0x0C)
                    case UInt8(ascii: "n"): raw.append(0x0A)
                    case UInt8(ascii: "r"): raw.append(0x0D)
                    case UInt8(ascii: "t"): raw.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard offset + 1 < bytes.count, bytes[offset] == UInt8(ascii: "\\"), bytes[offset + 1] == UInt8(ascii: "u") else {
                                throw error("a high surrogate \\u escape without its low surrogate")
                            }
                            offset += 2
                            let low = try hex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw error("invalid low surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(scalar) {
                            throw error("a low surrogate \\u escape without its high surrogate")
                        }
                        // Valid by the checks above: not a surrogate, at most 0x10FFFF.
                        guard let unicode = Unicode.Scalar(scalar) else { throw error("invalid \\u escape") }
                        raw.append(contentsOf: String(Character(unicode)).utf8)
                    default: throw error("invalid escape '\\\(Unicode.Scalar(escaped))'")
                    }
                }
            }
            guard let text = String(validating: raw, as: UTF8.self) else { throw error("a string that is not valid UTF-8") }
            return text
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard offset + 4 <= bytes.count else { throw error("truncated \\u escape") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let b = bytes[offset]
                let digit: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
                default: throw error("invalid hex digit in a \\u escape")
                }
                value = value << 4 | UInt32(digit)
                offset += 1
            }
            return value
        }

        mutating func number() throws(ParseError) -> Double {
            let start = offset
            func digits(_ parser: inout Parser) -> Int {
                var count = 0
                while let b = parser.peek, b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") {
                    parser.offset += 1
                    count += 1
                }
                return count
            }
            if peek == UInt8(ascii: "-") { offset += 1 }
            if peek == UInt8(ascii: "0") {
                offset += 1
            } else if digits(&self) == 0 {
                throw error("a number needs digits")
            }
            if peek == UInt8(ascii: ".") {
                offset += 1
                guard digits(&self) > 0 else { throw error("a fraction needs digits") }
            }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                offset += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { offset += 1 }
                guard digits(&self) > 0 else { throw error("an exponent needs digits") }
            }
            let text = String(decoding: bytes[start..<offset], as: UTF8.self)
            guard let value = Double(text), value.isFinite else { throw ParseError(offset: start, reason: "number out of range") }
            return value
        }
    }
}

// MARK: - Writing

extension JSONValue {
    /// The value as compact JSON text, object members in sorted order (so equal values give equal texts).
    public var jsonText: String {
        var out = ""
        write(to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n.isFinite ? Self.format(n) : "null"
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, name) in members.keys.sorted().enumerated() {
                if index > 0 { out += "," }
                Self.quote(name, into: &out)
                out += ":"
                members[name]!.write(to: &out)  // a key of the dictionary just listed
            }
            out += "}"
        }
    }

    private static func quote(_ s: String, into out: inout String) { out += quoted(s) }

    /// `text` as a JSON string literal: quotes, backslashes and control characters (and DEL) escaped; with
    /// `escapingLineSeparators`, also U+2028 and U+2029, which some JavaScript parsers take as newlines.
    public static func quoted(_ text: String, escapingLineSeparators: Bool = true) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || (escapingLineSeparators && (scalar.value == 0x2028 || scalar.value == 0x2029)) {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

// MARK: - Field values

extension JSONValue {
    /// A field value as JSON: integers and doubles as numbers, bytes as UTF-8 text (or an array of byte values).
    public init(fieldValue: FieldValue) {
        switch fieldValue {
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .number(Double(i))
        case .double(let d): self = .number(d)
        case .string(let s): self = .string(s)
        case .bytes(let b): self = String(validating: b, as: UTF8.self).map(JSONValue.string) ?? .array(b.map { .number(Double($0)) })
        case .table(let t): self = .object(t.mapValues(JSONValue.init(fieldValue:)))
        case .array(let a): self = .array(a.map(JSONValue.init(fieldValue:)))
        }
    }

    /// The value as a field value (integral numbers as ints); nil for null, which field tables cannot hold.
    public var fieldValue: FieldValue? {
        switch self {
        case .null: return nil
        case .bool(let b): return .bool(b)
        case .number(let n): return n.rounded() == n && abs(n) < 9.0e15 ? .int(Int64(n)) : .double(n)
        case .string(let s): return .string(s)
        case .array(let items):
            var out: [FieldValue] = []
            for item in items {
                guard let value = item.fieldValue else { return nil }
                out.append(value)
            }
            return .array(out)
        case .object(let members):
            var out: FieldTable = [:]
            for (key, member) in members {
                guard let value = member.fieldValue else { return nil }
                out[key] = value
            }
            return .table(out)
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

// MARK: - JSON pointers (RFC 6901)

extension JSONValue {
    /// `key` as one segment of a JSON pointer: `~` as `~0`, `/` as `~1`.
    public static func pointerSegment(_ key: String) -> String {
        guard key.contains(where: { $0 == "~" || $0 == "/" }) else { return key }
        var out = ""
        for c in key {
            switch c {
            case "~": out += "~0"
            case "/": out += "~1"
            default: out.append(c)
            }
        }
        return out
    }

    /// The value a JSON pointer names (`""` is the whole value, `/a/0/b~1c` a member, an item, a member); nil when
    /// it names nothing.
    public func value(atPointer pointer: String) -> JSONValue? {
        guard !pointer.isEmpty else { return self }
        guard pointer.hasPrefix("/") else { return nil }
        var current = self
        for raw in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            let segment = String(raw).replacing("~1", with: "/").replacing("~0", with: "~")
            switch current {
            case .object(let members):
                guard let next = members[segment] else { return nil }
                current = next
            case .array(let items):
                guard let i = Int(segment), items.indices.contains(i) else { return nil }
                current = items[i]
            default:
                return nil
            }
        }
        return current
    }
}
