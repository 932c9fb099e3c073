import Foundation
public import WireProtocol

/// A JSON Schema compiled for checking message bodies on the publish path (docs/contracts.md, "Schemas").
///
/// The dialect is the part of JSON Schema that means the same in draft-07 (what AsyncAPI 3.0's schema object
/// extends) and in draft 2020-12, so a schema reads the same in an AsyncAPI document, in a contract file and to
/// any other validator. Keywords outside it are refused when the schema is compiled, never silently ignored: a
/// contract that seems to check something it does not would be worse than none. `format` is an annotation, as
/// both drafts specify by default. A `$ref` is a JSON pointer into the same schema (`#/$defs/point`,
/// `#/definitions/point`, `#`) and stands alone in its object, since draft-07 ignores its siblings.
///
/// Verdicts are checked against Python's `jsonschema` (Draft7Validator and Draft202012Validator) by
/// `scripts/check-json-schema-cases.py`, which CI runs on the cases the unit tests use.
public struct JSONSchema: Sendable {
    private let root: Node

    /// Why a schema cannot be used: the JSON pointer of the offending part and what is wrong.
    public struct CompileError: Error, Equatable, CustomStringConvertible {
        public var pointer: String
        public var reason: String
        public var description: String { "schema \(pointer.isEmpty ? "root" : pointer): \(reason)" }
    }

    /// Why an instance does not match: where in the instance (a JSON pointer) and which rule failed.
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "\(path.isEmpty ? "the body" : path): \(reason)" }
    }

    /// The keywords that constrain (each is checked).
    static let assertions: Set<String> = [
        "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
        "maxLength", "minLength", "pattern", "items", "maxItems", "minItems", "uniqueItems", "contains",
        "maxProperties", "minProperties", "required", "properties", "patternProperties", "additionalProperties",
        "propertyNames", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref",
    ]
    /// The keywords that only annotate or organise (accepted, not checked).
    static let annotations: Set<String> = [
        "$schema", "$id", "$comment", "$defs", "definitions", "title", "description", "default", "examples",
        "deprecated", "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding",
    ]

    /// Which JSON Schema a document is read as.
    public enum Dialect: Sendable {
        /// What means the same in draft-07 and 2020-12 (contracts' schemas: see the type's documentation).
        case common
        /// All of draft-07: also `items` as an array with `additionalItems`, `dependencies`, `$ref` beside
        /// other keywords (which draft-07 ignores), and unknown keywords ignored as draft-07 says. For checking documents against draft-07 schemas, such as
        /// AsyncAPI's own.
        case draft07
    }

    /// Compiles `schema`; every unsupported or malformed keyword is a ``CompileError`` naming where it is.
    public init(_ schema: JSONValue, dialect: Dialect = .common) throws(CompileError) {
        var compiler = Compiler(document: schema, dialect: dialect)
        root = try compiler.compile(schema, at: "")
        try compiler.resolveReferences()
    }

    /// Checks `instance`; nil when it matches, else the first failure found.
    public func check(_ instance: JSONValue) -> Failure? {
        var path: [PathSegment] = []
        let budget = Budget(remaining: Self.stepLimit)
        let failure = root.check(instance, path: &path, budget: budget)
        // Once the budget ran out every verdict below is unreliable (an exhausted anyOf branch reads as no match):
        // the whole check is refused instead.
        guard budget.remaining >= 0 else {
            return Failure(path: "", reason: "the body is too complex to check against the schema (more than \(Self.stepLimit) steps)")
        }
        return failure
    }

    /// The most schema-node visits one check makes. A body is attacker-controlled and a schema may branch
    /// (`anyOf` over recursive `$ref`s re-checks subtrees), so the work per message is bounded: a publish on the
    /// broker's event loop costs at most a few milliseconds, never a stall. Bodies a real schema describes take
    /// thousands of steps, not a million.
    public static let stepLimit = 1_000_000

    /// The steps one check has left; shared by every branch of it (a class, so checks on scratch paths count too).
    final class Budget {
        var remaining: Int
        init(remaining: Int) { self.remaining = remaining }
    }

    /// One step into an instance; rendered as a JSON pointer only when a failure is reported.
    enum PathSegment {
        case member(String)
        case index(Int)

        static func pointer(_ path: some Collection<PathSegment>) -> String {
            path.map { segment in
                switch segment {
                case .member(let name): "/" + Node.escape(name)
                case .index(let i): "/\(i)"
                }
            }.joined()
        }
    }

    // MARK: - The compiled form

    /// One schema object, its keywords as typed fields. Built once by the compiler and read-only afterwards
    /// (a `$ref` node gets its target once, when every node of the document exists).
    // @unchecked Sendable: a node's fields are written only while ``JSONSchema/init(_:)`` compiles it (on one
    // thread, before the schema value exists) and read-only afterwards; NSRegularExpression is documented as safe
    // to use from several threads.
    final class Node: @unchecked Sendable {
        enum Kind { case always, never, constraints }
        var kind = Kind.constraints
        var types: Set<String>?
        /// ``types`` as a mask of ``typeBit(_:)`` values, what the check compares.
        var typeMask: UInt8 = 0
        var enumValues: [JSONValue]?
        var constValue: JSONValue?
        var multipleOf: Double?
        var maximum: Double?
        var exclusiveMaximum: Double?
        var minimum: Double?
        var exclusiveMinimum: Double?
        var maxLength: Int?
        var minLength: Int?
        var pattern: (text: String, regex: NSRegularExpression)?
        var items: Node?
        /// Draft-07 only: `items` as an array (one schema per position) and what the items past it must match.
        var tupleItems: [Node]?
        var additionalItems: Node?
        /// Draft-07 only: when a member is present, other members it needs, or a schema the object must match.
        var dependencies: [(member: String, required: [String], schema: Node?)] = []
        var maxItems: Int?
        var minItems: Int?
        var uniqueItems = false
        var contains: Node?
        var maxProperties: Int?
        var minProperties: Int?
        var required: [String] = []
        var properties: [String: Node] = [:]
        /// ``properties`` sorted by name, for checking a body in a fixed order.
        var declaredInOrder: [(String, Node)] = []
        var patternProperties: [(text: String, regex: NSRegularExpression, node: Node)] = []
        var additionalProperties: Node?
        var propertyNames: Node?
        var allOf: [Node] = []
        var anyOf: [Node] = []
        var oneOf: [Node] = []
        var not: Node?
        var ifNode: Node?
        var thenNode: Node?
        var elseNode: Node?
        var reference: String?
        var target: Node?

        static func matches(_ regex: NSRegularExpression, _ text: String) -> Bool {
            regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
        }

        func check(_ value: JSONValue, path: inout [PathSegment], budget: Budget) -> Failure? {
            func fail(_ reason: String) -> Failure { Failure(path: PathSegment.pointer(path), reason: reason) }
            budget.remaining -= 1
            guard budget.remaining >= 0 else { return fail("the check ran out of steps") }
            switch kind {
            case .always: return nil
            case .never: return fail("no value is allowed here (the schema is false)")
            case .constraints: break
            }
            // A reference stands alone (the compiler refuses siblings).
            if let target { return target.check(value, path: &path, budget: budget) }

            if let types, typeMask & Self.typeBit(value) == 0 {
                let name = value.typeName
                let article = "aeiou".contains(name.first ?? "x") ? "an" : "a"
                return fail("\(value.summary) is \(article) \(name), not \(types.sorted().joined(separator: " or "))")
            }
            // JSONValue's == is JSON Schema's equality: numbers by value, objects regardless of member order.
            if let enumValues, !enumValues.contains(value) {
                return fail("\(value.summary) is not one of \(enumValues.map(\.summary).joined(separator: ", "))")
            }
            if let constValue, constValue != value {
                return fail("\(value.summary) is not \(constValue.summary)")
            }
            switch value {
            case .number(let n):
                if let maximum, n > maximum { return fail("\(JSONValue.format(n)) is more than the maximum \(JSONValue.format(maximum))") }
                if let exclusiveMaximum, n >= exclusiveMaximum { return fail("\(JSONValue.format(n)) is not less than \(JSONValue.format(exclusiveMaximum))") }
                if let minimum, n < minimum { return fail("\(JSONValue.format(n)) is less than the minimum \(JSONValue.format(minimum))") }
                if let exclusiveMinimum, n <= exclusiveMinimum { return fail("\(JSONValue.format(n)) is not more than \(JSONValue.format(exclusiveMinimum))") }
                if let multipleOf {
                    let quotient = n / multipleOf
                    if !quotient.isFinite || quotient.rounded() != quotient {
                        return fail("\(JSONValue.format(n)) is not a multiple of \(JSONValue.format(multipleOf))")
                    }
                }
            case .string(let s):
                if minLength != nil || maxLength != nil {
                    let length = s.unicodeScalars.count
                    if let minLength, length < minLength { return fail("\(value.summary) is shorter than \(minLength) characters") }
                    if let maxLength, length > maxLength { return fail("\(value.summary) is longer than \(maxLength) characters") }
                }
                if let pattern, !Self.matches(pattern.regex, s) { return fail("\(value.summary) does not match the pattern \(pattern.text)") }
            case .array(let elements):
                if let minItems, elements.count < minItems { return fail("an array of \(elements.count) has fewer than \(minItems) items") }
                if let maxItems, elements.count > maxItems { return fail("an array of \(elements.count) has more than \(maxItems) items") }
                if uniqueItems {
                    // By hashing, not pairwise: a body of 500,000 items must not cost 10^11 comparisons. JSONValue's
                    // equality is JSON Schema's (numbers by value, objects by content), and its hash agrees with it.
                    var first: [JSONValue: Int] = [:]
                    first.reserveCapacity(elements.count)
                    for (j, element) in elements.enumerated() {
                        if let i = first.updateValue(j, forKey: element) {
                            return fail("items \(i) and \(j) are equal, and the items must be unique")
                        }
                    }
                }
                if let items {
                    for (index, element) in elements.enumerated() {
                        path.append(.index(index))
                        let failure = items.check(element, path: &path, budget: budget)
                        path.removeLast()
                        if let failure { return failure }
                    }
                }
                if let tupleItems {
                    for (index, element) in elements.enumerated() {
                        guard let node = index < tupleItems.count ? tupleItems[index] : additionalItems else { break }
                        path.append(.index(index))
                        let failure = node.check(element, path: &path, budget: budget)
                        path.removeLast()
                        if let failure { return failure }
                    }
                }
                if let contains {
                    var scratch = path
                    guard elements.contains(where: { contains.check($0, path: &scratch, budget: budget) == nil }) else {
                        return fail("no item matches what the array must contain")
                    }
                }
            case .object(let members):
                if let minProperties, members.count < minProperties { return fail("an object with \(members.count) members has fewer than \(minProperties)") }
                if let maxProperties, members.count > maxProperties { return fail("an object with \(members.count) members has more than \(maxProperties)") }
                for name in required where members[name] == nil { return fail("the required member '\(name)' is missing") }
                for dependency in dependencies where members[dependency.member] != nil {
                    for name in dependency.required where members[name] == nil {
                        return fail("the member '\(dependency.member)' needs '\(name)' beside it")
                    }
                    if let node = dependency.schema, let failure = node.check(value, path: &path, budget: budget) { return failure }
                }
                // Unsorted first (the common case: the body matches); when a member fails, again in sorted order,
                // so the failure reported for a given body is always the same one.
                if checkMembers(members, names: members.keys, path: &path, budget: budget) != nil {
                    return checkMembers(members, names: members.keys.sorted(), path: &path, budget: budget)
                }
            case .null, .bool:
                break
            }
            return checkCombinators(value, path: &path, budget: budget)
        }

        private func checkMembers(_ members: [String: JSONValue], names: some Sequence<String>, path: inout [PathSegment], budget: Budget) -> Failure? {
            let onlyDeclared = patternProperties.isEmpty && additionalProperties == nil && propertyNames == nil
            if onlyDeclared {
                // Only the declared members have rules: look them up instead of walking the body.
                for (name, node) in declaredInOrder {
                    guard let member = members[name] else { continue }
                    path.append(.member(name))
                    defer { path.removeLast() }
                    if let failure = node.check(member, path: &path, budget: budget) { return failure }
                }
                return nil
            }
            for name in names {
                let member = members[name]!  // a key of the dictionary being enumerated
                path.append(.member(name))
                defer { path.removeLast() }
                if let propertyNames {
                    var scratch = path
                    if let failure = propertyNames.check(.string(name), path: &scratch, budget: budget) {
                        return Failure(path: failure.path, reason: "the member name is not allowed: \(failure.reason)")
                    }
                }
                var matched = false
                if let node = properties[name] {
                    matched = true
                    if let failure = node.check(member, path: &path, budget: budget) { return failure }
                }
                for entry in patternProperties where Self.matches(entry.regex, name) {
                    matched = true
                    if let failure = entry.node.check(member, path: &path, budget: budget) { return failure }
                }
                if !matched, let additionalProperties {
                    if additionalProperties.kind == .never {
                        return Failure(path: PathSegment.pointer(path.dropLast()), reason: "the member '\(name)' is not allowed")
                    }
                    if let failure = additionalProperties.check(member, path: &path, budget: budget) { return failure }
                }
            }
            return nil
        }

        private func checkCombinators(_ value: JSONValue, path: inout [PathSegment], budget: Budget) -> Failure? {
            func fail(_ reason: String) -> Failure { Failure(path: PathSegment.pointer(path), reason: reason) }
            for node in allOf {
                if let failure = node.check(value, path: &path, budget: budget) { return failure }
            }
            if !anyOf.isEmpty {
                var scratch = path
                guard anyOf.contains(where: { $0.check(value, path: &scratch, budget: budget) == nil }) else {
                    return fail("\(value.summary) matches none of the \(anyOf.count) anyOf alternatives")
                }
            }
            if !oneOf.isEmpty {
                var scratch = path
                let matching = oneOf.filter { $0.check(value, path: &scratch, budget: budget) == nil }.count
                guard matching == 1 else {
                    return fail("\(value.summary) matches \(matching) of the oneOf alternatives, not exactly one")
                }
            }
            if let not {
                var scratch = path
                if not.check(value, path: &scratch, budget: budget) == nil { return fail("\(value.summary) matches a schema it must not match") }
            }
            if let ifNode {
                var scratch = path
                if ifNode.check(value, path: &scratch, budget: budget) == nil {
                    if let thenNode, let failure = thenNode.check(value, path: &path, budget: budget) { return failure }
                } else if let elseNode, let failure = elseNode.check(value, path: &path, budget: budget) {
                    return failure
                }
            }
            return nil
        }

        /// The type of `value` as a mask bit; an integer also has the number bit, as JSON Schema's types nest.
        static func typeBit(_ value: JSONValue) -> UInt8 {
            switch value {
            case .null: 1
            case .bool: 2
            case .number(let n): n.rounded() == n && n.isFinite ? 4 | 8 : 8
            case .string: 16
            case .array: 32
            case .object: 64
            }
        }

        static let typeBits: [String: UInt8] = ["null": 1, "boolean": 2, "integer": 4, "number": 8, "string": 16, "array": 32, "object": 64]

        /// A member name as a JSON pointer segment (RFC 6901).
        static func escape(_ name: String) -> String { JSONValue.pointerSegment(name) }
    }

    // MARK: - Compiling

    private struct Compiler {
        let document: JSONValue
        let dialect: Dialect
        /// Every `$ref` node and where it appeared, resolved once the whole document is compiled.
        var references: [(node: Node, pointer: String)] = []
        /// Compiled targets by pointer, so a recursive schema is one cycle of nodes, not an endless tree.
        var compiled: [String: Node] = [:]

        init(document: JSONValue, dialect: Dialect) {
            self.document = document
            self.dialect = dialect
        }

        func error(_ pointer: String, _ reason: String) -> CompileError { CompileError(pointer: pointer, reason: reason) }

        mutating func compile(_ schema: JSONValue, at pointer: String) throws(CompileError) -> Node {
            if let existing = compiled[pointer] { return existing }
            let node = Node()
            compiled[pointer] = node
            switch schema {
            case .bool(let allowed):
                node.kind = allowed ? .always : .never
                return node
            case .object(let keywords):
                try fill(node, keywords, at: pointer)
                return node
            default:
                throw error(pointer, "a schema is an object or a boolean, not \(schema.summary)")
            }
        }

        mutating func fill(_ node: Node, _ keywords: [String: JSONValue], at pointer: String) throws(CompileError) {
            // Draft-07 ignores keywords it does not know (as the reference validators do); contracts refuse them.
            for key in keywords.keys.sorted() where dialect == .common && !JSONSchema.assertions.contains(key) && !JSONSchema.annotations.contains(key) {
                throw error(pointer, Self.unsupported[key] ?? "the keyword '\(key)' is not supported (docs/contracts.md lists the keywords brokerd checks)")
            }
            func at(_ key: String) -> String { pointer + "/" + Node.escape(key) }
            func count(_ key: String) throws(CompileError) -> Int? {
                guard let value = keywords[key] else { return nil }
                guard case .number(let n) = value, n >= 0, n.rounded() == n, n < 1e9 else {
                    throw error(at(key), "'\(key)' must be a non-negative integer")
                }
                return Int(n)
            }
            func number(_ key: String) throws(CompileError) -> Double? {
                guard let value = keywords[key] else { return nil }
                guard case .number(let n) = value else { throw error(at(key), "'\(key)' must be a number") }
                return n
            }
            func regex(_ text: String, _ where_: String) throws(CompileError) -> NSRegularExpression {
                do {
                    return try NSRegularExpression(pattern: text)
                } catch {
                    throw self.error(where_, "'\(text)' is not a regular expression")
                }
            }
            func schemas(_ key: String) throws(CompileError) -> [Node] {
                guard let value = keywords[key] else { return [] }
                guard case .array(let list) = value, !list.isEmpty else {
                    throw error(at(key), "'\(key)' must be a non-empty array of schemas")
                }
                var nodes: [Node] = []
                for (index, element) in list.enumerated() { nodes.append(try compile(element, at: at(key) + "/\(index)")) }
                return nodes
            }
            func schema(_ key: String) throws(CompileError) -> Node? {
                guard let value = keywords[key] else { return nil }
                return try compile(value, at: at(key))
            }

            if let value = keywords["$ref"] {
                guard let text = value.stringValue, text == "#" || text.hasPrefix("#/") else {
                    throw error(at("$ref"), "only references within the schema are supported, like #/$defs/point")
                }
                if dialect == .draft07 {
                    // Draft-07: "All other properties in a $ref object MUST be ignored."
                    node.reference = text
                    references.append((node, pointer))
                    return
                }
                let siblings = keywords.keys.filter { JSONSchema.assertions.contains($0) && $0 != "$ref" }
                guard siblings.isEmpty else {
                    throw error(pointer, "'$ref' must stand alone (draft-07 ignores \(siblings.sorted().joined(separator: ", ")) beside it); combine with allOf instead")
                }
                node.reference = text
                references.append((node, pointer))
            }
            // Definitions are compiled where they stand, so errors in unused ones are reported too.
            for container in ["$defs", "definitions"] {
                guard let value = keywords[container] else { continue }
                guard case .object(let definitions) = value else { throw error(at(container), "'\(container)' must be an object of schemas") }
                for (name, definition) in definitions { _ = try compile(definition, at: at(container) + "/" + Node.escape(name)) }
            }

            if let value = keywords["type"] {
                let names: [String]
                switch value {
                case .string(let name): names = [name]
                case .array(let list): names = list.compactMap(\.stringValue)
                    guard names.count == list.count, !names.isEmpty else { throw error(at("type"), "'type' must be a type name or an array of them") }
                default: throw error(at("type"), "'type' must be a type name or an array of them")
                }
                let known: Set = ["null", "boolean", "object", "array", "number", "string", "integer"]
                for name in names where !known.contains(name) {
                    throw error(at("type"), "'\(name)' is not a JSON Schema type (\(known.sorted().joined(separator: ", ")))")
                }
                node.types = Set(names)
                node.typeMask = names.reduce(0) { $0 | (Node.typeBits[$1] ?? 0) }
            }
            if let value = keywords["enum"] {
                guard case .array(let list) = value else { throw error(at("enum"), "'enum' must be an array") }
                node.enumValues = list
            }
            node.constValue = keywords["const"]
            node.multipleOf = try number("multipleOf")
            if let m = node.multipleOf, m <= 0 { throw error(at("multipleOf"), "'multipleOf' must be more than 0") }
            node.maximum = try number("maximum")
            node.exclusiveMaximum = try number("exclusiveMaximum")
            node.minimum = try number("minimum")
            node.exclusiveMinimum = try number("exclusiveMinimum")
            node.maxLength = try count("maxLength")
            node.minLength = try count("minLength")
            if let value = keywords["pattern"] {
                guard let text = value.stringValue else { throw error(at("pattern"), "'pattern' must be a string") }
                node.pattern = (text, try regex(text, at("pattern")))
            }
            if let value = keywords["items"] {
                if case .array(let list) = value {
                    guard dialect == .draft07 else {
                        throw error(at("items"), "'items' as an array means different things in draft-07 and 2020-12; give one schema for every item")
                    }
                    var tuple: [Node] = []
                    for (index, element) in list.enumerated() { tuple.append(try compile(element, at: at("items") + "/\(index)")) }
                    node.tupleItems = tuple
                    node.additionalItems = try schema("additionalItems")
                } else {
                    node.items = try compile(value, at: at("items"))
                }
            }
            if let value = keywords["dependencies"] {
                guard case .object(let members) = value else { throw error(at("dependencies"), "'dependencies' must be an object") }
                for (name, dependency) in members.sorted(by: { $0.key < $1.key }) {
                    if case .array(let list) = dependency {
                        node.dependencies.append((name, list.compactMap(\.stringValue), nil))
                    } else {
                        node.dependencies.append((name, [], try compile(dependency, at: at("dependencies") + "/" + Node.escape(name))))
                    }
                }
            }
            node.maxItems = try count("maxItems")
            node.minItems = try count("minItems")
            if let value = keywords["uniqueItems"] {
                guard case .bool(let unique) = value else { throw error(at("uniqueItems"), "'uniqueItems' must be true or false") }
                node.uniqueItems = unique
            }
            node.contains = try schema("contains")
            node.maxProperties = try count("maxProperties")
            node.minProperties = try count("minProperties")
            if let value = keywords["required"] {
                guard case .array(let list) = value else { throw error(at("required"), "'required' must be an array of member names") }
                let names = list.compactMap(\.stringValue)
                guard names.count == list.count, Set(names).count == names.count else {
                    throw error(at("required"), "'required' must list distinct member names")
                }
                node.required = names
            }
            if let value = keywords["properties"] {
                guard case .object(let members) = value else { throw error(at("properties"), "'properties' must be an object of schemas") }
                for (name, member) in members { node.properties[name] = try compile(member, at: at("properties") + "/" + Node.escape(name)) }
                node.declaredInOrder = node.properties.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
            }
            if let value = keywords["patternProperties"] {
                guard case .object(let members) = value else { throw error(at("patternProperties"), "'patternProperties' must be an object of schemas") }
                for (text, member) in members.sorted(by: { $0.key < $1.key }) {
                    let place = at("patternProperties") + "/" + Node.escape(text)
                    node.patternProperties.append((text, try regex(text, place), try compile(member, at: place)))
                }
            }
            node.additionalProperties = try schema("additionalProperties")
            node.propertyNames = try schema("propertyNames")
            node.allOf = try schemas("allOf")
            node.anyOf = try schemas("anyOf")
            node.oneOf = try schemas("oneOf")
            node.not = try schema("not")
            node.ifNode = try schema("if")
            node.thenNode = try schema("then")
            node.elseNode = try schema("else")
        }

        /// Points each `$ref` node at its target, compiling targets that are not themselves schema positions
        /// already seen (a pointer into `$defs` was compiled with its container; `#/properties/a` with its parent).
        mutating func resolveReferences() throws(CompileError) {
            var index = 0
            while index < references.count {
                let (node, pointer) = references[index]
                index += 1
                let text = node.reference ?? "#"
                let target = String(text.dropFirst())
                guard let value = document.value(atPointer: target) else {
                    throw error(pointer + "/$ref", "'\(text)' points at nothing in this schema")
                }
                node.target = try compile(value, at: target)
            }
            // A chain of references that never reaches a schema (#/$defs/a -> #/$defs/b -> #/$defs/a).
            for (node, pointer) in references {
                var seen = Set<ObjectIdentifier>()
                var current = node
                while let next = current.target {
                    guard seen.insert(ObjectIdentifier(current)).inserted else {
                        throw error(pointer + "/$ref", "references that only point at each other")
                    }
                    current = next
                }
            }
        }

        /// Keywords refused with a reason of their own.
        static let unsupported: [String: String] = [
            "prefixItems": "'prefixItems' exists only in draft 2020-12 (draft-07 would ignore it); describe the items with 'items'",
            "additionalItems": "'additionalItems' exists only in draft-07; describe the items with 'items'",
            "dependencies": "'dependencies' exists only in draft-07 (2020-12 splits it); express it with if/then",
            "dependentRequired": "'dependentRequired' exists only in draft 2020-12; express it with if/then and required",
            "dependentSchemas": "'dependentSchemas' exists only in draft 2020-12; express it with if/then",
            "minContains": "'minContains' exists only in draft 2020-12",
            "maxContains": "'maxContains' exists only in draft 2020-12",
            "unevaluatedProperties": "'unevaluatedProperties' is not supported; list the members and use additionalProperties",
            "unevaluatedItems": "'unevaluatedItems' is not supported",
            "$dynamicRef": "'$dynamicRef' is not supported; use a $ref into $defs",
            "$anchor": "'$anchor' is not supported; use a $ref JSON pointer like #/$defs/point",
        ]
    }
}
