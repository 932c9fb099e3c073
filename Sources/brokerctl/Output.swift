import ArgumentParser
import Foundation
import WireProtocol

/// Prints rows (tables with snake_case keys, as the broker's management methods answer them) as an aligned table
/// or as JSON. Data goes to stdout; nothing else does.
struct Renderer {
    var format: OutputFormat
    /// Columns asked for with `--columns`, or nil for the defaults.
    var requested: [String]?

    /// Checks the requested columns against those a listing has; an unknown name is a usage error listing them.
    func columns(defaults: [String], available: [String]) throws -> [String]? {
        guard let requested else { return format == .json ? nil : defaults }
        let unknown = requested.filter { !available.contains($0) }
        guard unknown.isEmpty else {
            throw ValidationError("unknown column\(unknown.count > 1 ? "s" : "") \(unknown.joined(separator: ", ")); available: \(available.joined(separator: ", "))")
        }
        return requested
    }

    /// The rows in the chosen format; `columns` nil means every key (JSON only).
    func render(_ rows: [FieldTable], columns: [String]?) -> String {
        switch format {
        case .json:
            let objects = rows.map { row in
                var object: [String: Any] = [:]
                for (key, value) in row where columns?.contains(key) ?? true { object[key] = Self.jsonObject(value) }
                return object
            }
            return Self.json(objects)
        case .table:
            return Self.table(rows, columns: columns ?? rows.first.map { $0.keys.sorted() } ?? [])
        }
    }

    /// An aligned table: a header of column names, numbers right-aligned.
    static func table(_ rows: [FieldTable], columns: [String]) -> String {
        let cells = rows.map { row in columns.map { row[$0].map(text) ?? "" } }
        var widths = columns.map(\.count)
        for line in cells {
            for (i, cell) in line.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        func numeric(_ column: Int) -> Bool {
            rows.contains { if case .int? = $0[columns[column]] { true } else if case .double? = $0[columns[column]] { true } else { false } }
        }
        let rightAligned = columns.indices.map(numeric)
        func line(_ values: [String]) -> String {
            values.enumerated().map { i, value in
                let pad = String(repeating: " ", count: widths[i] - value.count)
                return rightAligned[i] ? pad + value : value + pad
            }.joined(separator: "  ")
        }
        var out = [line(columns)]
        out += cells.map(line)
        return out.map { $0.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression) }.joined(separator: "\n")
    }

    /// A value as a table cell: one line, so control characters (a body's trailing newline) are escaped.
    static func text(_ value: FieldValue) -> String {
        switch value {
        case .string(let s): oneLine(s)
        case .int(let i): String(i)
        case .bool(let b): String(b)
        case .double(let d): String(format: "%.1f", d)
        case .bytes(let b): oneLine(String(decoding: b, as: UTF8.self))
        case .table(let t) where t.isEmpty: ""
        case .array(let a) where a.isEmpty: ""
        case .array(let a): a.map(text).joined(separator: ", ")
        default: json(jsonObject(value), compact: true)
        }
    }

    /// `text` with newlines, tabs and other control characters written as escapes (`\n`, `\t`, `\u{1B}`).
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// A value as a JSON-serialisable object. Bytes are text when they are UTF-8, else base64 in an object.
    static func jsonObject(_ value: FieldValue) -> Any {
        switch value {
        case .string(let s): return s
        case .int(let i): return i
        case .bool(let b): return b
        case .double(let d): return d.isFinite ? d : 0
        case .bytes(let b):
            if let text = String(validating: b, as: UTF8.self) { return text }
            return ["base64": Data(b).base64EncodedString()]
        case .table(let t): return t.mapValues(jsonObject)
        case .array(let a): return a.map(jsonObject)
        }
    }

    /// JSON with sorted keys, indented unless `compact` (table cells).
    static func json(_ object: Any, compact: Bool = false) -> String {
        var options: JSONSerialization.WritingOptions = [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes]
        if !compact { options.insert(.prettyPrinted) }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: options) else {
            return "null"
        }
        return String(decoding: data, as: UTF8.self)
    }
}
