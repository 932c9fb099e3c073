import WireProtocol

/// The limits a connection runs with once negotiated.
struct Tuning: Hashable, Sendable {
    var version: ProtocolVersion
    var maxFrameSize: UInt32
    var heartbeatSeconds: UInt16
}

/// A connection's lifecycle, free of any channel or event loop so it can be tested as a sequence of events:
/// `awaitingHello → awaitingAuth → authenticating → open → closing → closed`.
///
/// The handler decodes frames, feeds them here and carries out the returned ``Action``.
struct ConnectionStateMachine {
    enum State: Hashable {
        case awaitingHello
        case awaitingAuth(ProtocolVersion)
        case authenticating(Tuning)
        case open(Tuning)
        /// We sent `close` and wait for the socket to go away.
        case closing
        case closed
    }

    enum Action: Hashable {
        /// Write this frame and carry on.
        case send(ServerMessage)
        /// Check these credentials off the event loop, then call ``authenticated(connectionId:)`` or ``refused(_:)``.
        case verify(Authenticate, Tuning)
        /// Hand the frame to the broker session.
        case forward(ClientMessage)
        /// Authentication succeeded: send `authOk`, open the session, then replay held frames.
        case open(AuthOk, Tuning)
        /// Write this frame (a `close` or `closeOk`), then close the socket.
        case sendAndClose(ServerMessage)
        /// Do nothing.
        case none
    }

    let serverMaxFrameSize: UInt32
    let serverHeartbeatSeconds: UInt16
    let serverName: String
    private(set) var state: State = .awaitingHello

    init(maxFrameSize: UInt32, heartbeatSeconds: UInt16, serverName: String) {
        self.serverMaxFrameSize = maxFrameSize
        self.serverHeartbeatSeconds = heartbeatSeconds
        self.serverName = serverName
    }

    mutating func received(_ message: ClientMessage) -> Action {
        switch state {
        case .awaitingHello:
            guard case .hello(let hello) = message else {
                return fail(.unexpectedFrame, "expected hello as the first frame, got \(message.frameType)")
            }
            guard let version = ProtocolVersion.negotiate(offered: hello.versions) else {
                let offered = hello.versions.map(\.description).joined(separator: ", ")
                let spoken = ProtocolVersion.supported.map(\.description).joined(separator: ", ")
                return fail(.unsupportedVersion, "no common protocol version: client offered [\(offered)], server speaks [\(spoken)]")
            }
            state = .awaitingAuth(version)
            return .send(.helloOk(HelloOk(version: version, maxFrameSize: serverMaxFrameSize, heartbeatSeconds: serverHeartbeatSeconds,
                                          serverName: serverName, mechanisms: ["PLAIN"])))
        case .awaitingAuth(let version):
            guard case .authenticate(let auth) = message else {
                return fail(.unexpectedFrame, "expected authenticate after hello, got \(message.frameType)")
            }
            guard auth.mechanism == "PLAIN" else {
                return fail(.accessRefused, "unsupported authentication mechanism '\(auth.mechanism)'; supported: PLAIN")
            }
            if auth.maxFrameSize != 0 && auth.maxFrameSize < Frame.minimumMaxSize {
                return fail(.invalidArgument, "max frame size \(auth.maxFrameSize) is below the minimum of \(Frame.minimumMaxSize)")
            }
            // A message travels in one frame, and any connection may publish one as large as the broker's limit,
            // so a consumer must accept frames that large: a smaller limit is refused here, not broken later by a
            // delivery that does not fit it (docs/protocol.md §4).
            if auth.maxFrameSize != 0 && auth.maxFrameSize < serverMaxFrameSize {
                return fail(.invalidArgument, "max frame size \(auth.maxFrameSize) is below this broker's message limit of \(serverMaxFrameSize) bytes: a delivery may be that large; ask for 0 (the server's) or at least \(serverMaxFrameSize), or run the broker with a smaller --max-frame-size")
            }
            let tuning = Tuning(version: version, maxFrameSize: Self.negotiate(auth.maxFrameSize, serverMaxFrameSize),
                                heartbeatSeconds: Self.negotiate(auth.heartbeatSeconds, serverHeartbeatSeconds))
            state = .authenticating(tuning)
            return .verify(auth, tuning)
        case .authenticating:
            // The handler decodes nothing while the password is checked (``decodesFrames``): frames pipelined
            // after `authenticate` wait, undecoded, and take the open connection's path once it opens.
            return fail(.internalError, "\(message.frameType) decoded while authentication was in progress")
        case .open:
            switch message {
            case .close: return closeRequested()
            case .hello, .authenticate: return fail(.unexpectedFrame, "\(message.frameType) after the handshake")
            default: return .forward(message)
            }
        case .closing, .closed:
            return .none
        }
    }

    mutating func authenticated(connectionId: UInt64) -> Action {
        guard case .authenticating(let tuning) = state else { return .none }
        state = .open(tuning)
        return .open(AuthOk(connectionId: connectionId, maxFrameSize: tuning.maxFrameSize, heartbeatSeconds: tuning.heartbeatSeconds), tuning)
    }

    mutating func refused(_ error: BrokerError) -> Action {
        guard case .authenticating = state else { return .none }
        return fail(error.code, error.message)
    }

    /// A fatal error: the frame was malformed, the session refused it, or a timer fired.
    mutating func fail(_ code: BrokerError.Code, _ text: String) -> Action {
        switch state {
        case .closing, .closed: return .none
        default:
            state = .closing
            return .sendAndClose(.close(Close(code: code, reason: text)))
        }
    }

    mutating func socketClosed() { state = .closed }

    var isOpen: Bool { if case .open = state { true } else { false } }

    /// Whether incoming frames are decoded now: not while the password is checked (they wait in the read
    /// buffer, so a frame pipelined before `authOk` is decoded and checked exactly as on an open connection), and
    /// not once we are closing.
    var decodesFrames: Bool {
        switch state {
        case .authenticating, .closing, .closed: false
        default: true
        }
    }

    /// Whether the connection is still live (not closing or closed).
    var acceptsFrames: Bool {
        switch state {
        case .closing, .closed: false
        default: true
        }
    }

    private mutating func closeRequested() -> Action {
        state = .closing
        return .sendAndClose(.closeOk)
    }

    /// Both sides propose; 0 means "no preference", otherwise the smaller wins.
    static func negotiate<T: FixedWidthInteger>(_ client: T, _ server: T) -> T {
        if client == 0 { return server }
        if server == 0 { return client }
        return min(client, server)
    }
}

/// Heartbeat bookkeeping: send one when we have been quiet for half the interval; declare the peer dead when it
/// has been silent for two intervals. Times are passed in, so tests need no clock.
struct HeartbeatMonitor {
    enum Verdict: Equatable { case fine, sendHeartbeat, peerDead }

    let intervalNanos: Int64
    var lastReceivedNanos: Int64
    var lastSentNanos: Int64

    init(intervalSeconds: UInt16, nowNanos: Int64) {
        self.intervalNanos = Int64(intervalSeconds) * 1_000_000_000
        self.lastReceivedNanos = nowNanos
        self.lastSentNanos = nowNanos
    }

    func check(nowNanos: Int64) -> Verdict {
        if nowNanos - lastReceivedNanos > 2 * intervalNanos { return .peerDead }
        if nowNanos - lastSentNanos >= intervalNanos / 2 { return .sendHeartbeat }
        return .fine
    }

    /// How long until the next check has something to do: a heartbeat falls due, or the peer's silence reaches
    /// two intervals. Checking then (rather than on a fixed tick of H/2, which let a silent peer live up to
    /// 2.5 × H) closes a dead connection at 2 × H, as docs/protocol.md §6 says. At least 1 ms.
    func nanosUntilNextCheck(nowNanos: Int64) -> Int64 {
        let sendDue = lastSentNanos + intervalNanos / 2
        let deadDue = lastReceivedNanos + 2 * intervalNanos + 1
        return max(1_000_000, min(sendDue, deadDue) - nowNanos)
    }
}
