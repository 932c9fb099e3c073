public import NIOCore

/// The credentials in a `connection.start-ok` response, for the two mechanisms brokerd offers over AMQP
/// (RabbitMQ's defaults): PLAIN (RFC 4616: `authzid NUL user NUL password`) and AMQPLAIN (a field table's
/// entries without the table's length prefix, `LOGIN` and `PASSWORD` as long strings).
public struct AMQPCredentials: Hashable, Sendable {
    public var user: String
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// The mechanisms offered in `connection.start`, in preference order.
    public static let mechanisms = "PLAIN AMQPLAIN"

    /// Reads `response` as `mechanism` says. An unknown mechanism or a malformed response is `access-refused`
    /// (403, what RabbitMQ answers), with a text that names the mechanism but never echoes the secret.
    public static func read(mechanism: String, response: [UInt8]) throws(AMQPWireError) -> AMQPCredentials {
        switch mechanism {
        case "PLAIN":
            let parts = response.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else {
                throw AMQPWireError(.accessRefused, "a PLAIN response is authzid NUL user NUL password")
            }
            guard let user = String(validating: parts[1], as: UTF8.self), let password = String(validating: parts[2], as: UTF8.self),
                  !user.isEmpty else {
                throw AMQPWireError(.accessRefused, "a PLAIN response needs a UTF-8 user name and password")
            }
            return AMQPCredentials(user: user, password: password)
        case "AMQPLAIN":
            var framed = ByteBuffer()
            framed.writeInteger(UInt32(response.count))
            framed.writeBytes(response)
            let table: AMQPTable
            do {
                table = try framed.readAMQPTable("AMQPLAIN response")
            } catch {
                throw AMQPWireError(.accessRefused, "an AMQPLAIN response is a field table of LOGIN and PASSWORD: \(error.text)")
            }
            guard let user = table["LOGIN"]?.stringValue, let password = table["PASSWORD"]?.stringValue, !user.isEmpty else {
                throw AMQPWireError(.accessRefused, "an AMQPLAIN response needs LOGIN and PASSWORD as long strings")
            }
            return AMQPCredentials(user: user, password: password)
        default:
            throw AMQPWireError(.accessRefused, "unknown authentication mechanism '\(mechanism)'; brokerd offers \(mechanisms)")
        }
    }

    /// The response a client sends for these credentials (for BrokerClient's AMQP transport and for tests).
    public func response(mechanism: String) throws(AMQPWireError) -> [UInt8] {
        switch mechanism {
        case "PLAIN": return [0] + Array(user.utf8) + [0] + Array(password.utf8)
        case "AMQPLAIN":
            var buffer = ByteBuffer()
            try buffer.writeAMQPTable(["LOGIN": .string(user), "PASSWORD": .string(password)])
            buffer.moveReaderIndex(forwardBy: 4)  // the mechanism's form has no length prefix
            return Array(buffer.readableBytesView)
        default:
            throw AMQPWireError(.accessRefused, "unknown authentication mechanism '\(mechanism)'")
        }
    }
}
