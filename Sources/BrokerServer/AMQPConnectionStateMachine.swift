import AMQPWire

/// What an AMQP 0-9-1 connection negotiated: the limits both sides keep to.
struct AMQPTuning: Hashable, Sendable {
    var channelMax: UInt16
    var frameMax: UInt32
    var heartbeatSeconds: UInt16
}

/// An AMQP 0-9-1 connection's life on channel 0, free of sockets so it is tested as a sequence of events:
/// `awaitingHeader → awaitingStartOk → authenticating → awaitingTuneOk → awaitingOpen → open → closing → closed`
/// (the specification's 2.2.4). Channels are the handler's business once the connection is open.
struct AMQPConnectionStateMachine {
    enum State: Hashable {
        case awaitingHeader
        case awaitingStartOk
        case authenticating
        /// Authenticated; the client's answer to `connection.tune` comes next.
        case awaitingTuneOk
        case awaitingOpen(AMQPTuning)
        case open(AMQPTuning)
        /// We sent `connection.close` and wait for `close-ok` (or the socket's end).
        case closing
        case closed
    }

    enum Action: Hashable {
        /// Write these methods on channel 0 and carry on.
        case send([AMQPMethod])
        /// Check the credentials off the event loop, then call ``authenticated()`` or ``refused(_:)``.
        case verify(AMQPCredentials)
        /// The connection is open with these limits: start heartbeats, accept channels.
        case open(AMQPTuning, AMQPMethod)
        /// Write `connection.close` with this code and text, wait for `close-ok` (a bounded time), then close.
        case close(AMQPWireError, classId: UInt16, methodId: UInt16)
        /// The client closed: release everything, write `close-ok`, close the socket.
        case closeOk
        /// A client that does not speak AMQP 0-9-1: answer with the protocol header we speak, close the socket.
        case rejectHeader
        /// Close the socket.
        case closeSocket
        case none
    }

    let maxFrameSize: UInt32
    let heartbeatSeconds: UInt16
    let serverProperties: AMQPTable
    static let channelMax: UInt16 = 2047
    private(set) var state = State.awaitingHeader
    /// The client's `client-properties` (its name, its capabilities).
    private(set) var clientProperties = AMQPTable()

    init(maxFrameSize: UInt32, heartbeatSeconds: UInt16, serverProperties: AMQPTable) {
        self.maxFrameSize = max(maxFrameSize, AMQPFrame.minimumFrameMax)
        self.heartbeatSeconds = heartbeatSeconds
        self.serverProperties = serverProperties
    }

    var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    /// Whether the client may send `connection.blocked`-aware flow (it said so in its capabilities).
    var clientUnderstandsBlocked: Bool {
        if case .table(let capabilities)? = clientProperties["capabilities"], case .bool(true)? = capabilities["connection.blocked"] {
            return true
        }
        return false
    }

    /// The name the client gave (`connection_name`, else `product`), for listings and logs.
    var clientName: String {
        clientProperties["connection_name"]?.stringValue ?? clientProperties["product"]?.stringValue ?? "amqp client"
    }

    /// The 8-byte protocol header.
    mutating func header(_ bytes: [UInt8]) -> Action {
        guard case .awaitingHeader = state else { return .none }
        guard bytes == AMQPFrame.protocolHeader else {
            state = .closed
            return .rejectHeader
        }
        state = .awaitingStartOk
        return .send([AMQPMethod("connection.start", [
            "version-major": .octet(0), "version-minor": .octet(9), "server-properties": .table(serverProperties),
            "mechanisms": .longString(Array(AMQPCredentials.mechanisms.utf8)), "locales": .longString(Array("en_US".utf8)),
        ])])
    }

    /// A method on channel 0.
    mutating func received(_ method: AMQPMethod) -> Action {
        let name = method.signature.name
        switch (state, name) {
        case (.closing, "connection.close-ok"), (.closing, "connection.close"):
            state = .closed
            return name == "connection.close" ? .closeOk : .closeSocket
        case (.closing, _), (.closed, _):
            return .none  // after our close, everything but close-ok is discarded (2.2.4)
        case (_, "connection.close"):
            state = .closed
            return .closeOk
        case (.awaitingStartOk, "connection.start-ok"):
            clientProperties = method.table("client-properties")
            let mechanism = method.string("mechanism")
            guard case .longString(let response)? = method["response"] else { return fail(.syntaxError, "start-ok without a response") }
            do {
                let credentials = try AMQPCredentials.read(mechanism: mechanism, response: response)
                state = .authenticating
                return .verify(credentials)
            } catch {
                return fail(error.code, error.text, method)
            }
        case (.awaitingTuneOk, "connection.tune-ok"):
            let frameMax = UInt32(truncatingIfNeeded: method.integer("frame-max"))
            let channelMax = UInt16(truncatingIfNeeded: method.integer("channel-max"))
            let heartbeat = UInt16(truncatingIfNeeded: method.integer("heartbeat"))
            if frameMax != 0 && frameMax < AMQPFrame.minimumFrameMax {
                return fail(.syntaxError, "frame-max \(frameMax) is below the minimum of \(AMQPFrame.minimumFrameMax)", method)
            }
            if frameMax > maxFrameSize {
                return fail(.syntaxError, "frame-max \(frameMax) is above the \(maxFrameSize) the server offered", method)
            }
            let tuning = AMQPTuning(channelMax: channelMax == 0 ? Self.channelMax : min(channelMax, Self.channelMax),
                                    frameMax: frameMax == 0 ? maxFrameSize : frameMax, heartbeatSeconds: heartbeat)
            state = .awaitingOpen(tuning)
            return .none
        case (.awaitingOpen(let tuning), "connection.open"):
            let host = method.string("virtual-host")
            guard host == "/" || host.isEmpty else {
                return fail(.notAllowed, "vhost '\(host)' not found: brokerd has one virtual host, '/'", method)
            }
            state = .open(tuning)
            return .open(tuning, AMQPMethod("connection.open-ok"))
        case (.open, "connection.blocked"), (.open, "connection.unblocked"), (.open, "connection.update-secret"):
            return fail(.notImplemented, "\(name) from a client is not supported", method)
        case (.open, _):
            return fail(.commandInvalid, "\(name) is not a method for channel 0", method)
        default:
            return fail(.commandInvalid, "\(name) was not expected during the connection's negotiation (\(state))", method)
        }
    }

    /// The password check succeeded: propose the limits.
    mutating func authenticated() -> Action {
        guard case .authenticating = state else { return .none }
        state = .awaitingTuneOk
        return .send([AMQPMethod("connection.tune", [
            "channel-max": .short(Self.channelMax), "frame-max": .long(maxFrameSize), "heartbeat": .short(heartbeatSeconds),
        ])])
    }

    /// The password check failed (or the login was refused): ACCESS_REFUSED, as RabbitMQ answers.
    mutating func refused(_ text: String) -> Action {
        guard case .authenticating = state else { return .none }
        return fail(.accessRefused, text, classId: 10, methodId: 11)
    }

    /// A connection exception: close with the code (the methods that caused it name themselves).
    mutating func fail(_ code: AMQPWireError.Code, _ text: String, _ method: AMQPMethod? = nil) -> Action {
        fail(code, text, classId: method?.signature.classId ?? 0, methodId: method?.signature.methodId ?? 0)
    }

    mutating func fail(_ code: AMQPWireError.Code, _ text: String, classId: UInt16, methodId: UInt16) -> Action {
        switch state {
        case .closing, .closed: return .none
        case .awaitingHeader:
            state = .closed
            return .closeSocket
        default:
            state = .closing
            return .close(AMQPWireError(code, text), classId: classId, methodId: methodId)
        }
    }

    /// The socket is gone.
    mutating func socketClosed() { state = .closed }
}
