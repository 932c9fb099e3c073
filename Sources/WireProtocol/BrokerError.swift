/// The one error type of brokerd: a numeric code from the protocol's table and a readable text.
///
/// The same codes travel in `Error` and `Close` frames (docs/protocol.md, "Error codes"), so a failure
/// looks the same to the broker, to the client library and to brokerctl.
public struct BrokerError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A protocol error code. Extensible: new codes are new static members, never a breaking change.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// Normal close, no error.
        public static let normal = Code(rawValue: 200)
        /// A mandatory message could not be routed to any queue (carried by `Return`).
        public static let noRoute = Code(rawValue: 312)
        /// The broker is shutting down or an operator closed the connection.
        public static let connectionForced = Code(rawValue: 320)
        /// Wrong credentials, or the user may not do this.
        public static let accessRefused = Code(rawValue: 403)
        /// The named exchange, queue or consumer does not exist.
        public static let notFound = Code(rawValue: 404)
        /// The queue is exclusive to another connection, or has an exclusive consumer.
        public static let resourceLocked = Code(rawValue: 405)
        /// A redeclaration does not match, or if-unused / if-empty does not hold.
        public static let preconditionFailed = Code(rawValue: 406)
        /// The peer sent nothing for two heartbeat intervals.
        public static let heartbeatTimeout = Code(rawValue: 408)
        /// A frame is larger than the negotiated maximum.
        public static let frameTooLarge = Code(rawValue: 413)
        /// A message its exchange's contract does not allow: no type, an undeclared type or major version, or a
        /// retired one (docs/contracts.md).
        public static let contractViolation = Code(rawValue: 422)
        /// A request did not complete in time (client side only).
        public static let timeout = Code(rawValue: 504)
        /// Something went wrong inside the broker; the request was not applied.
        public static let internalError = Code(rawValue: 500)
        /// A frame is malformed: truncated, trailing bytes, bad length, invalid UTF-8.
        public static let frameError = Code(rawValue: 501)
        /// A name, routing key or argument is invalid.
        public static let invalidArgument = Code(rawValue: 502)
        /// The frame is not valid in the connection's current state (for example a publish before authentication).
        public static let unexpectedFrame = Code(rawValue: 503)
        /// No protocol version in common.
        public static let unsupportedVersion = Code(rawValue: 505)
        /// A server limit was reached (for example too many consumers).
        public static let resourceError = Code(rawValue: 506)
        /// The frame type is unknown to this protocol version.
        public static let unknownFrame = Code(rawValue: 540)
        /// A delivery was settled on a later connection than the one that delivered it (client side only): the
        /// old connection dropped, the broker redelivers the message, and the redelivery is the one to settle.
        public static let staleDelivery = Code(rawValue: 598)
        /// The connection is closed (client side only).
        public static let connectionClosed = Code(rawValue: 599)

        public var name: String {
            switch rawValue {
            case 200: "NORMAL"
            case 312: "NO_ROUTE"
            case 320: "CONNECTION_FORCED"
            case 403: "ACCESS_REFUSED"
            case 404: "NOT_FOUND"
            case 405: "RESOURCE_LOCKED"
            case 406: "PRECONDITION_FAILED"
            case 408: "HEARTBEAT_TIMEOUT"
            case 413: "FRAME_TOO_LARGE"
            case 422: "CONTRACT_VIOLATION"
            case 500: "INTERNAL_ERROR"
            case 501: "FRAME_ERROR"
            case 502: "INVALID_ARGUMENT"
            case 503: "UNEXPECTED_FRAME"
            case 504: "TIMEOUT"
            case 505: "UNSUPPORTED_VERSION"
            case 506: "RESOURCE_ERROR"
            case 540: "UNKNOWN_FRAME"
            case 598: "STALE_DELIVERY"
            case 599: "CONNECTION_CLOSED"
            default: "CODE_\(rawValue)"
            }
        }

        public var description: String { "\(rawValue) \(name)" }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.name) (\(code.rawValue)): \(message)" }

    static func frame(_ message: String) -> BrokerError { BrokerError(.frameError, message) }
}
