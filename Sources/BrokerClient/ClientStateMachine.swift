import DequeModule
import NIOCore
import WireProtocol

/// The client side of one logical connection, as a pure state machine: phases (connecting, handshake, open,
/// recovering, waiting to reconnect, closing, closed), pending requests with their deadlines, consumers, publisher
/// confirms, flow control, the topology to redeclare after a reconnect, and the delivery tags that may be settled.
///
/// Every event is a `mutating` method that returns the ``Action``s to carry out; ``ConnectionDriver`` (the thin
/// part that owns sockets, promises and streams) runs them. Nothing here touches a channel, a clock or a random
/// generator: time arrives as `now` arguments, so the tests drive timeouts and heartbeats with plain values.
///
/// Callers are named by ids the driver hands in (``CallID`` for requests, ``PublishID`` for publishes,
/// ``ConsumerID`` for consumers); the machine decides when each completes and the driver only looks the id up.
struct ClientStateMachine {
    typealias CallID = UInt64
    typealias PublishID = UInt64
    typealias ConsumerID = UInt64

    // MARK: - Types

    enum Phase: Equatable {
        /// A TCP connect is under way to `endpoint` (an index into the configured endpoints).
        case connecting(attempt: Int, endpoint: Int)
        /// Magic and hello sent; waiting for helloOk.
        case awaitingHelloOk(attempt: Int)
        /// Authenticate sent; waiting for authOk.
        case awaitingAuthOk(attempt: Int, HelloOk)
        /// Reconnected: redeclaring topology and consumers before callers' traffic flows again.
        case recovering(RecoveryStage)
        case open
        /// Disconnected; a reconnect timer is running. `attempt` counts from 1.
        case waitingToReconnect(attempt: Int)
        /// The caller asked to close: close sent, waiting for closeOk or the socket to go.
        case closing
        case closed(BrokerError)
    }

    enum RecoveryStage: Equatable {
        /// Confirm mode, exchanges and queues (bindings need the queues' new names).
        case declarations
        /// Bindings and consumers.
        case bindingsAndConsumers
    }

    /// What a request is for, so its answer lands in the right place.
    enum Purpose: Equatable {
        /// A caller's request; on success, `topology` (if any) is recorded for recovery.
        case caller(CallID, TopologyChange?)
        /// A caller's consume: on consumeOk the consumer is registered under the broker's tag.
        case consume(CallID, ConsumerID)
        /// A caller's cancel of a consumer.
        case cancel(CallID, ConsumerID)
        /// The caller's `enableConfirms`.
        case confirmSelect(CallID)
        /// A caller's get; unless `noAck`, the delivery it answers must be settled.
        case get(CallID, noAck: Bool)
        /// Part of recovery (not visible to callers).
        case recovery(RecoveryStep)
        /// The caller gave up waiting (deadline passed). A late answer is dropped, and a late consumeOk cancels
        /// the consumer it created at the broker, since nobody holds it.
        case abandoned(wasConsume: Bool)
    }

    enum RecoveryStep: Equatable {
        case confirmSelect
        case exchange(String)
        /// The queue recorded under `recordedName` (server-named queues get a new name).
        case queue(recordedName: String)
        case binding
        case consumer(ConsumerID)
    }

    /// A declaration or deletion to remember once the broker accepted it.
    enum TopologyChange: Equatable {
        case declareExchange(ExchangeDeclare)
        case deleteExchange(String)
        /// `serverNamed`: the caller asked for a generated name (the record follows the name the broker gave).
        case declareQueue(QueueDeclare, serverNamed: Bool)
        case deleteQueue(String)
        case bind(QueueBinding)
        case unbind(QueueBinding)
    }

    struct PendingRequest: Equatable {
        var purpose: Purpose
        /// When the caller stops waiting; nil for recovery steps, which are bounded by the connection's life.
        var deadline: NIODeadline?
    }

    struct QueueRecord: Equatable {
        var declare: QueueDeclare
        var serverNamed: Bool
    }

    struct ConsumerRecord: Equatable {
        var queue: String
        var prefetch: UInt16
        var noAck: Bool
        var exclusive: Bool
        var arguments: FieldTable
        /// The broker's tag on the current connection; nil while not (yet, or no longer) registered.
        var serverTag: UInt32?
        /// Whether the broker ever accepted this consumer: only those are resumed after a reconnect (a consume
        /// still waiting in the queue of requests goes out by itself).
        var registered = false
    }

    /// A request that waits for the connection to be open (issued while recovering or waiting to reconnect).
    struct QueuedRequest: Equatable {
        var message: ClientMessage
        var pending: PendingRequest
    }

    struct HeldPublish: Equatable {
        var id: PublishID
        var publish: Publish
        var deadline: NIODeadline
    }

    struct Unconfirmed: Equatable {
        var sequence: UInt64
        var id: PublishID
        /// Kept to re-send after a reconnect (nil when re-sending is off).
        var publish: Publish?
    }

    enum Action: Equatable {
        /// Connect a new socket to the configured endpoint with this index.
        case connect(endpoint: Int)
        /// Write the protocol magic, then this hello.
        case sendHello(Hello)
        case send(ClientMessage)
        /// Close the socket (after writing what was sent).
        case closeChannel
        /// Wait before reconnect attempt `attempt`; the driver picks the delay (backoff with jitter).
        case scheduleReconnect(attempt: Int)
        /// The first handshake finished: the connection is usable.
        case opened(HelloOk, AuthOk)
        case succeed(CallID, ServerMessage)
        case fail(CallID, BrokerError)
        /// A publish was written; without confirms, its caller continues once the socket can take more.
        case written(PublishID)
        case confirmed(PublishID)
        case publishFailed(PublishID, BrokerError)
        case deliver(ConsumerID, Deliver)
        /// The consumer's sequence ends (with an error if the broker cancelled it or the connection is gone).
        case finishConsumer(ConsumerID, BrokerError?)
        case returned(Returned)
        /// An error frame no request waits for (a publish without confirms, a settle).
        case asyncError(BrokerError)
        case flow(FlowEvent)
        /// The broker's advice (protocol 1.1), such as a deprecated message version.
        case notice(Notice)
        case event(ConnectionEvent)
    }

    // MARK: - State

    let endpointCount: Int
    let recovery: RecoveryPolicy?
    let hello: Hello
    let authenticate: Authenticate
    let requestTimeout: TimeAmount
    /// How long a publish may wait while the connection recovers or the broker blocks publishers.
    let publishTimeout: TimeAmount
    let republishUnconfirmed: Bool

    private(set) var phase: Phase
    /// Whether the connection ended because the caller closed it (not a failure).
    private(set) var closedByClient = false
    /// Counts connections: a delivery tag is valid only on the connection (epoch) that delivered it.
    private(set) var epoch: UInt64 = 0
    private(set) var negotiated: AuthOk?
    private var everOpened = false
    private var nextRequestId: UInt32 = 0
    private(set) var pending: [UInt32: PendingRequest] = [:]
    private var queued: [QueuedRequest] = []

    private(set) var consumers: [ConsumerID: ConsumerRecord] = [:]
    private var consumerByTag: [UInt32: ConsumerID] = [:]

    private(set) var exchanges: [String: ExchangeDeclare] = [:]
    private var exchangeOrder: [String] = []
    private(set) var queues: [String: QueueRecord] = [:]
    private var queueOrder: [String] = []
    private(set) var bindings: [QueueBinding] = []

    private(set) var confirmsEnabled = false
    private var publishSequence: UInt64 = 0
    private(set) var unconfirmed = Deque<Unconfirmed>()
    /// Publishes waiting for the connection (recovering) or for the broker to unblock publishers.
    private(set) var held = Deque<HeldPublish>()
    private(set) var blocked = false

    /// Delivery tags of this epoch that still need an ack, nack or reject, in ascending order.
    private(set) var unsettled = Deque<UInt64>()

    private var lastReceived: NIODeadline = .uptimeNanoseconds(0)
    private var lastSent: NIODeadline = .uptimeNanoseconds(0)
    private var heartbeat: TimeAmount?
    /// Heartbeat frames the broker has sent on this connection (all epochs), for ``BrokerConnection/statistics()``.
    private(set) var heartbeatsReceived = 0

    init(endpointCount: Int, hello: Hello, authenticate: Authenticate, recovery: RecoveryPolicy?, requestTimeout: TimeAmount,
         publishTimeout: TimeAmount, republishUnconfirmed: Bool) {
        self.endpointCount = max(1, endpointCount)
        self.hello = hello
        self.authenticate = authenticate
        self.recovery = recovery
        self.requestTimeout = requestTimeout
        self.publishTimeout = publishTimeout
        self.republishUnconfirmed = republishUnconfirmed
        self.phase = .connecting(attempt: 0, endpoint: 0)
    }

    /// The first action: connect to the first endpoint.
    func start() -> Action { .connect(endpoint: 0) }

    var isOpen: Bool { phase == .open }

    var isTerminal: Bool {
        if case .closed = phase { return true }
        return false
    }

    /// Recorded queue names, in declaration order (for tests and diagnostics).
    var recordedQueueNames: [String] { queueOrder }

    /// The queue a consumer reads now (a server-named queue gets a new name after a reconnect).
    func queue(of consumer: ConsumerID) -> String? { consumers[consumer]?.queue }

    // MARK: - Socket events

    /// The socket connected: send magic and hello.
    mutating func channelActive(now: NIODeadline) -> [Action] {
        guard case .connecting(let attempt, _) = phase else { return [.closeChannel] }
        phase = .awaitingHelloOk(attempt: attempt)
        lastReceived = now
        lastSent = now
        return [.sendHello(hello)]
    }

    /// The TCP connect failed.
    mutating func connectFailed(_ error: BrokerError) -> [Action] {
        guard case .connecting(let attempt, let endpoint) = phase else { return [] }
        return attemptFailed(attempt: attempt, endpoint: endpoint, error)
    }

    /// The socket closed. `error` says why when known (a close frame, a decode error, a heartbeat timeout).
    mutating func channelClosed(_ error: BrokerError?) -> [Action] {
        let cause = error ?? BrokerError(.connectionClosed, "the broker closed the connection")
        switch phase {
        case .connecting(let attempt, let endpoint):
            return attemptFailed(attempt: attempt, endpoint: endpoint, cause)
        case .awaitingHelloOk(let attempt), .awaitingAuthOk(let attempt, _):
            return attemptFailed(attempt: attempt, endpoint: endpointIndex(attempt), cause)
        case .open, .recovering:
            return connectionLost(cause)
        case .waitingToReconnect:
            return []
        case .closing:
            return terminate(BrokerError(.connectionClosed, "connection closed by the client"), byClient: true)
        case .closed:
            return []
        }
    }

    /// The reconnect delay passed.
    mutating func reconnectTimerFired() -> [Action] {
        guard case .waitingToReconnect(let attempt) = phase else { return [] }
        let endpoint = endpointIndex(attempt)
        phase = .connecting(attempt: attempt, endpoint: endpoint)
        return [.connect(endpoint: endpoint)]
    }

    private func endpointIndex(_ attempt: Int) -> Int { attempt % endpointCount }

    /// One connect or handshake attempt failed: try the next endpoint, back off, or give up.
    private mutating func attemptFailed(attempt: Int, endpoint: Int, _ error: BrokerError) -> [Action] {
        if !everOpened {
            // The first connect tries every endpoint once, then reports the last failure to the caller.
            if attempt + 1 < endpointCount {
                phase = .connecting(attempt: attempt + 1, endpoint: attempt + 1)
                return [.connect(endpoint: attempt + 1)]
            }
            return terminate(error)
        }
        if error.code == .accessRefused {
            // The broker no longer accepts these credentials (the user was deleted or its password changed):
            // retrying cannot help, and hammering the broker with refused logins would look like an attack.
            return terminate(BrokerError(.accessRefused, "the broker refused this client's credentials on reconnect: \(error.message)"))
        }
        guard let recovery, recovery.allows(attempt: attempt + 1) else {
            let attempts = attempt
            return terminate(BrokerError(error.code, "gave up reconnecting after \(attempts) attempt(s): \(error.message)"))
        }
        phase = .waitingToReconnect(attempt: attempt + 1)
        return [.event(.reconnecting(attempt: attempt + 1, lastError: error)), .scheduleReconnect(attempt: attempt + 1)]
    }

    /// An open (or recovering) connection dropped.
    private mutating func connectionLost(_ error: BrokerError) -> [Action] {
        var actions: [Action] = []
        guard let recovery, Self.isRecoverable(error), recovery.allows(attempt: 1) else {
            return terminate(error)
        }
        actions.append(.event(.disconnected(error)))
        // Requests in flight may or may not have been carried out: their callers get the error and decide.
        failPending(error, into: &actions)
        // Consumers stay registered; they resume after recovery under new broker tags.
        for id in consumers.keys { consumers[id]?.serverTag = nil }
        consumerByTag.removeAll()
        unsettled.removeAll()
        blocked = false
        // Unconfirmed publishes: re-sent after recovery, or failed now.
        let waiting = unconfirmed
        unconfirmed.removeAll()
        for entry in waiting.reversed() {
            if republishUnconfirmed, let publish = entry.publish {
                held.prepend(HeldPublish(id: entry.id, publish: publish, deadline: .distantFuture))
            } else {
                actions.append(.publishFailed(entry.id, BrokerError(.connectionClosed,
                    "the connection dropped before the broker confirmed this publish; it may or may not have arrived")))
            }
        }
        phase = .waitingToReconnect(attempt: 1)
        actions.append(.event(.reconnecting(attempt: 1, lastError: error)))
        actions.append(.scheduleReconnect(attempt: 1))
        return actions
    }

    /// Whether a loss is worth reconnecting after: network failures, heartbeat timeouts and the broker's own
    /// shutdown or forced close are; an error the client caused (a protocol violation, refused credentials) is not.
    static func isRecoverable(_ error: BrokerError) -> Bool {
        switch error.code {
        case .connectionClosed, .connectionForced, .heartbeatTimeout, .internalError, .timeout, .resourceError: true
        default: false
        }
    }

    // MARK: - Frames from the broker

    mutating func received(_ message: ServerMessage, now: NIODeadline) -> [Action] {
        lastReceived = now
        switch message {
        case .helloOk(let ok):
            guard case .awaitingHelloOk(let attempt) = phase else { return protocolViolation("helloOk") }
            phase = .awaitingAuthOk(attempt: attempt, ok)
            lastSent = now
            return [.send(.authenticate(authenticate))]
        case .authOk(let ok):
            guard case .awaitingAuthOk(_, let helloOk) = phase else { return protocolViolation("authOk") }
            return authenticated(helloOk, ok, now: now)
        case .heartbeat:
            heartbeatsReceived &+= 1
            return []
        case .close(let close):
            var actions: [Action] = [.send(.closeOk), .closeChannel]
            let error = BrokerError(close.code, close.reason)
            if case .closing = phase {
                actions += terminate(BrokerError(.connectionClosed, "connection closed by the client"), byClient: true)
            } else {
                actions += channelClosed(error)
            }
            return actions
        case .closeOk:
            if case .closing = phase {
                return [.closeChannel] + terminate(BrokerError(.connectionClosed, "connection closed by the client"), byClient: true)
            }
            return [.closeChannel] + channelClosed(BrokerError(.unexpectedFrame, "the broker sent closeOk out of turn"))
        case .ok(let requestId), .getEmpty(let requestId):
            return answer(requestId, message)
        case .countOk(let requestId, _), .statusOk(let requestId, _), .manageOk(let requestId, _):
            return answer(requestId, message)
        case .queueDeclareOk(let ok):
            return answer(ok.requestId, message)
        case .getOk(let ok):
            return answer(ok.requestId, message)
        case .consumeOk(let ok):
            return answer(ok.requestId, message)
        case .error(let frame):
            if frame.requestId == 0 { return [.asyncError(frame.error)] }
            return answerError(frame.requestId, frame.error)
        case .deliver(let deliver):
            guard let consumer = consumerByTag[deliver.consumerTag], let record = consumers[consumer] else { return [] }
            if !record.noAck { unsettled.append(deliver.deliveryTag) }
            return [.deliver(consumer, deliver)]
        case .returned(let returned):
            return [.returned(returned)]
        case .confirmAck(let confirm):
            return settleConfirms(confirm, error: nil)
        case .confirmNack(let confirm):
            return settleConfirms(confirm, error: BrokerError(confirm.code, "publish refused by the broker: \(confirm.text)"))
        case .notice(let notice):
            return [.notice(notice)]
        case .connectionBlocked(let reason):
            blocked = true
            return [.flow(.blocked(reason: reason))]
        case .connectionUnblocked:
            blocked = false
            var actions: [Action] = [.flow(.unblocked)]
            if case .open = phase { releaseHeld(into: &actions) }
            return actions
        case .consumerCancelled(let cancelled):
            guard let consumer = consumerByTag.removeValue(forKey: cancelled.consumerTag) else { return [] }
            consumers[consumer] = nil
            return [.finishConsumer(consumer, BrokerError(cancelled.code, "consumer cancelled by the broker: \(cancelled.reason)"))]
        }
    }

    private mutating func protocolViolation(_ frame: String) -> [Action] {
        let error = BrokerError(.unexpectedFrame, "the broker sent \(frame) out of turn")
        var actions: [Action] = [.send(.close(Close(code: error.code, reason: error.message))), .closeChannel]
        actions += terminate(error)
        return actions
    }

    private mutating func authenticated(_ helloOk: HelloOk, _ ok: AuthOk, now: NIODeadline) -> [Action] {
        epoch &+= 1
        negotiated = ok
        heartbeat = ok.heartbeatSeconds > 0 ? .seconds(Int64(ok.heartbeatSeconds)) : nil
        publishSequence = 0
        if !everOpened {
            everOpened = true
            phase = .open
            return [.opened(helloOk, ok)]
        }
        // A reconnect: redeclare what this connection declared before callers' traffic resumes.
        phase = .recovering(.declarations)
        var actions: [Action] = []
        if confirmsEnabled { actions.append(sendRecovery(.confirmSelect) { .confirmSelect(requestId: $0) }) }
        for name in exchangeOrder {
            guard var declare = exchanges[name] else { continue }
            actions.append(sendRecovery(.exchange(name)) { declare.requestId = $0; return .exchangeDeclare(declare) })
        }
        for name in queueOrder {
            guard let record = queues[name] else { continue }
            var declare = record.declare
            if record.serverNamed { declare.name = "" }
            actions.append(sendRecovery(.queue(recordedName: name)) { declare.requestId = $0; return .queueDeclare(declare) })
        }
        return actions + advanceRecovery()
    }

    private mutating func sendRecovery(_ step: RecoveryStep, _ build: (UInt32) -> ClientMessage) -> Action {
        let id = allocateRequestId()
        pending[id] = PendingRequest(purpose: .recovery(step), deadline: nil)
        return .send(build(id))
    }

    private var recoveryOutstanding: Bool {
        pending.values.contains { if case .recovery = $0.purpose { true } else { false } }
    }

    /// Moves recovery on once a stage's answers are all in.
    private mutating func advanceRecovery() -> [Action] {
        guard case .recovering(let stage) = phase, !recoveryOutstanding else { return [] }
        var actions: [Action] = []
        switch stage {
        case .declarations:
            phase = .recovering(.bindingsAndConsumers)
            for binding in bindings {
                actions.append(sendRecovery(.binding) { var b = binding; b.requestId = $0; return .queueBind(b) })
            }
            for (id, record) in consumers.sorted(by: { $0.key < $1.key }) where record.registered {
                actions.append(sendRecovery(.consumer(id)) {
                    .consume(Consume(requestId: $0, queue: record.queue, noAck: record.noAck, exclusive: record.exclusive,
                                     prefetch: record.prefetch, arguments: record.arguments))
                })
            }
            return actions + advanceRecovery()
        case .bindingsAndConsumers:
            phase = .open
            actions.append(.event(.recovered))
            // Requests and publishes issued meanwhile go out now, in the order they were made.
            let waiting = queued
            queued.removeAll()
            for request in waiting {
                let id = allocateRequestId()
                pending[id] = request.pending
                actions.append(.send(request.message.withRequestId(id)))
            }
            releaseHeld(into: &actions)
            return actions
        }
    }

    /// Records or forgets topology once the broker accepted a change.
    private mutating func record(_ change: TopologyChange, answer: ServerMessage) {
        switch change {
        case .declareExchange(let declare):
            if exchanges[declare.name] == nil { exchangeOrder.append(declare.name) }
            exchanges[declare.name] = declare
        case .deleteExchange(let name):
            exchanges[name] = nil
            exchangeOrder.removeAll { $0 == name }
            bindings.removeAll { $0.exchange == name }
        case .declareQueue(var declare, let serverNamed):
            guard case .queueDeclareOk(let ok) = answer else { return }
            declare.name = ok.name
            if queues[ok.name] == nil { queueOrder.append(ok.name) }
            queues[ok.name] = QueueRecord(declare: declare, serverNamed: serverNamed)
        case .deleteQueue(let name):
            forgetQueue(name)
        case .bind(let binding):
            var binding = binding
            binding.requestId = 0
            if !bindings.contains(binding) { bindings.append(binding) }
        case .unbind(let binding):
            bindings.removeAll { $0.queue == binding.queue && $0.exchange == binding.exchange && $0.bindingKey == binding.bindingKey }
        }
    }

    private mutating func forgetQueue(_ name: String) {
        queues[name] = nil
        queueOrder.removeAll { $0 == name }
        bindings.removeAll { $0.queue == name }
    }

    /// A server-named queue was redeclared under a new name: its bindings and consumers follow.
    private mutating func rename(queue old: String, to new: String) {
        guard old != new, var record = queues.removeValue(forKey: old) else { return }
        record.declare.name = new
        queues[new] = record
        if let index = queueOrder.firstIndex(of: old) { queueOrder[index] = new }
        for index in bindings.indices where bindings[index].queue == old { bindings[index].queue = new }
        for (id, consumer) in consumers where consumer.queue == old { consumers[id]?.queue = new }
    }

    private mutating func answer(_ requestId: UInt32, _ message: ServerMessage) -> [Action] {
        guard let request = pending.removeValue(forKey: requestId) else { return [] }
        switch request.purpose {
        case .caller(let call, let change):
            if let change { record(change, answer: message) }
            return [.succeed(call, message)]
        case .get(let call, let noAck):
            if case .getOk(let ok) = message, !noAck { unsettled.append(ok.deliveryTag) }
            return [.succeed(call, message)]
        case .consume(let call, let consumer):
            guard case .consumeOk(let ok) = message, var record = consumers[consumer] else { return [.succeed(call, message)] }
            record.serverTag = ok.consumerTag
            record.registered = true
            consumers[consumer] = record
            consumerByTag[ok.consumerTag] = consumer
            return [.succeed(call, message)]
        case .cancel(let call, let consumer):
            return [.succeed(call, message)] + forgetConsumer(consumer, error: nil)
        case .confirmSelect(let call):
            return [.succeed(call, message)]
        case .abandoned(let wasConsume):
            if wasConsume, case .consumeOk(let ok) = message {
                // Nobody holds this consumer: cancel it at the broker so its messages go to others.
                return [cancelOrphan(tag: ok.consumerTag)]
            }
            return []
        case .recovery(let step):
            switch step {
            case .queue(let recordedName):
                if case .queueDeclareOk(let ok) = message { rename(queue: recordedName, to: ok.name) }
            case .consumer(let consumer):
                if case .consumeOk(let ok) = message {
                    guard consumers[consumer] != nil else {
                        // Cancelled by the caller while it was being resumed: cancel it at the broker too.
                        return [cancelOrphan(tag: ok.consumerTag)] + advanceRecovery()
                    }
                    consumers[consumer]?.serverTag = ok.consumerTag
                    consumerByTag[ok.consumerTag] = consumer
                }
            case .confirmSelect, .exchange, .binding:
                break
            }
            return advanceRecovery()
        }
    }

    /// Cancels, at the broker, a consumer nobody holds; its answer is ignored.
    private mutating func cancelOrphan(tag: UInt32) -> Action {
        let id = allocateRequestId()
        pending[id] = PendingRequest(purpose: .abandoned(wasConsume: false), deadline: nil)
        return .send(.cancel(Cancel(requestId: id, consumerTag: tag)))
    }

    private mutating func answerError(_ requestId: UInt32, _ error: BrokerError) -> [Action] {
        guard let request = pending.removeValue(forKey: requestId) else { return [] }
        switch request.purpose {
        case .caller(let call, _), .confirmSelect(let call), .get(let call, _):
            if case .confirmSelect = request.purpose { confirmsEnabled = false }
            return [.fail(call, error)]
        case .consume(let call, let consumer):
            consumers[consumer] = nil
            return [.fail(call, error), .finishConsumer(consumer, error)]
        case .cancel(let call, _):
            return [.fail(call, error)]
        case .abandoned:
            return []
        case .recovery(let step):
            // Recovery goes on without what the broker refused; the service hears about it.
            var actions: [Action] = [.event(.recoveryError(error))]
            if case .consumer(let consumer) = step {
                consumers[consumer] = nil
                actions.append(.finishConsumer(consumer, BrokerError(error.code, "could not resume the consumer after a reconnect: \(error.message)")))
            }
            return actions + advanceRecovery()
        }
    }

    // MARK: - Caller requests

    private mutating func allocateRequestId() -> UInt32 {
        repeat {
            nextRequestId &+= 1
        } while nextRequestId == 0 || pending[nextRequestId] != nil
        return nextRequestId
    }

    /// Sends a request now when the connection is open, or queues it until recovery finishes.
    private mutating func submit(_ message: ClientMessage, purpose: Purpose, now: NIODeadline) -> [Action] {
        let request = PendingRequest(purpose: purpose, deadline: now + requestTimeout)
        switch phase {
        case .open:
            let id = allocateRequestId()
            pending[id] = request
            lastSent = now
            return [.send(message.withRequestId(id))]
        case .recovering, .waitingToReconnect, .connecting, .awaitingHelloOk, .awaitingAuthOk:
            guard everOpened else { return failCaller(purpose, closedError) }
            queued.append(QueuedRequest(message: message, pending: request))
            return []
        case .closing, .closed:
            return failCaller(purpose, closedError)
        }
    }

    private func failCaller(_ purpose: Purpose, _ error: BrokerError) -> [Action] {
        switch purpose {
        case .caller(let call, _), .cancel(let call, _), .confirmSelect(let call), .get(let call, _): [.fail(call, error)]
        case .consume(let call, let consumer): [.fail(call, error), .finishConsumer(consumer, error)]
        case .recovery, .abandoned: []
        }
    }

    var closedError: BrokerError {
        if case .closed(let error) = phase { return error }
        return BrokerError(.connectionClosed, "the connection is closing")
    }

    /// A request (declare, delete, bind, get, status, manage...). Its request id is filled in when it is sent.
    mutating func request(_ call: CallID, _ message: ClientMessage, recording change: TopologyChange? = nil, now: NIODeadline) -> [Action] {
        submit(message, purpose: .caller(call, change), now: now)
    }

    /// Takes one message; unless `noAck`, the answer's delivery tag must then be settled.
    mutating func get(_ call: CallID, _ get: Get, now: NIODeadline) -> [Action] {
        submit(.get(get), purpose: .get(call, noAck: get.noAck), now: now)
    }

    /// Starts a consumer; deliveries for it arrive as `.deliver(consumer, ...)` once consumeOk has come.
    mutating func consume(_ call: CallID, consumer: ConsumerID, _ consume: Consume, now: NIODeadline) -> [Action] {
        if case .closed = phase { return failCaller(.consume(call, consumer), closedError) }
        consumers[consumer] = ConsumerRecord(queue: consume.queue, prefetch: consume.prefetch, noAck: consume.noAck,
                                             exclusive: consume.exclusive, arguments: consume.arguments, serverTag: nil)
        return submit(.consume(consume), purpose: .consume(call, consumer), now: now)
    }

    /// Cancels a consumer. Without a broker tag (not registered yet, or between connections) it ends locally.
    mutating func cancel(_ call: CallID, consumer: ConsumerID, now: NIODeadline) -> [Action] {
        guard let record = consumers[consumer] else { return [.succeed(call, .ok(requestId: 0))] }
        guard let tag = record.serverTag, case .open = phase else {
            return [.succeed(call, .ok(requestId: 0))] + forgetConsumer(consumer, error: nil)
        }
        return submit(.cancel(Cancel(requestId: 0, consumerTag: tag)), purpose: .cancel(call, consumer), now: now)
    }

    private mutating func forgetConsumer(_ consumer: ConsumerID, error: BrokerError?) -> [Action] {
        guard let record = consumers.removeValue(forKey: consumer) else { return [] }
        if let tag = record.serverTag { consumerByTag[tag] = nil }
        // An auto-delete queue goes away with its last consumer: stop redeclaring it (as RabbitMQ's clients do).
        if let queue = queues[record.queue], queue.declare.autoDelete, !consumers.values.contains(where: { $0.queue == record.queue }) {
            forgetQueue(record.queue)
        }
        return [.finishConsumer(consumer, error)]
    }

    mutating func enableConfirms(_ call: CallID, now: NIODeadline) -> [Action] {
        if confirmsEnabled { return [.succeed(call, .ok(requestId: 0))] }
        if case .closed = phase { return [.fail(call, closedError)] }
        confirmsEnabled = true
        return submit(.confirmSelect(requestId: 0), purpose: .confirmSelect(call), now: now)
    }

    /// A publish: written now, or held while the broker blocks publishers or the connection recovers.
    mutating func publish(_ id: PublishID, _ publish: Publish, now: NIODeadline) -> [Action] {
        switch phase {
        case .open where !blocked:
            lastSent = now
            return write(id, publish)
        case .open, .recovering, .waitingToReconnect, .connecting, .awaitingHelloOk, .awaitingAuthOk:
            guard everOpened else { return [.publishFailed(id, closedError)] }
            held.append(HeldPublish(id: id, publish: publish, deadline: now + publishTimeout))
            return []
        case .closing, .closed:
            return [.publishFailed(id, closedError)]
        }
    }

    /// Whether the broker may not have read every publish written yet: some await their confirms, or, without
    /// confirms, publishers are blocked and a publish was written on this connection. A close then waits longer for
    /// the broker's closeOk (``ClientConfiguration/closeTimeout``).
    var closeAwaitsBroker: Bool { !unconfirmed.isEmpty || (blocked && wroteUnconfirmedPublish) }
    private var wroteUnconfirmedPublish = false

    private mutating func write(_ id: PublishID, _ publish: Publish) -> [Action] {
        if !confirmsEnabled { wroteUnconfirmedPublish = true }
        if confirmsEnabled {
            publishSequence += 1
            unconfirmed.append(Unconfirmed(sequence: publishSequence, id: id, publish: republishUnconfirmed ? publish : nil))
            return [.send(.publish(publish))]
        }
        return [.send(.publish(publish)), .written(id)]
    }

    private mutating func releaseHeld(into actions: inout [Action]) {
        while !blocked, case .open = phase, let next = held.popFirst() {
            actions += write(next.id, next.publish)
        }
    }

    private mutating func settleConfirms(_ confirm: Confirm, error: BrokerError?) -> [Action] {
        func finish(_ id: PublishID) -> Action { if let error { .publishFailed(id, error) } else { .confirmed(id) } }
        var actions: [Action] = []
        if confirm.multiple {
            while let first = unconfirmed.first, first.sequence <= confirm.sequence {
                unconfirmed.removeFirst()
                actions.append(finish(first.id))
            }
        } else if let index = unconfirmed.firstIndex(where: { $0.sequence == confirm.sequence }) {
            actions.append(finish(unconfirmed.remove(at: index).id))
        }
        return actions
    }

    // MARK: - Settling deliveries

    enum SettleKind: Equatable { case ack, nack(requeue: Bool), reject(requeue: Bool) }

    /// Acknowledges (or nacks, rejects) a delivery made on connection `epoch`. A delivery from an earlier
    /// connection is refused locally: that connection is gone and the broker redelivers the message, so acking
    /// its old tag on the new connection would settle a different message. A tag that is not outstanding (settled
    /// already) is refused too, so nothing is acked twice.
    mutating func settle(epoch: UInt64, deliveryTag: UInt64, multiple: Bool, _ kind: SettleKind, now: NIODeadline)
        -> Result<ClientMessage, BrokerError>
    {
        guard epoch == self.epoch, phase == .open || isRecoveringOnSameEpoch else {
            return .failure(BrokerError(.staleDelivery,
                "delivery \(deliveryTag) came on a connection that has since dropped; the broker redelivers it, so settle the redelivery"))
        }
        if multiple {
            guard let first = unsettled.first, first <= deliveryTag else {
                return .failure(BrokerError(.preconditionFailed, "no unsettled delivery up to tag \(deliveryTag)"))
            }
            while let head = unsettled.first, head <= deliveryTag { unsettled.removeFirst() }
        } else {
            guard let index = Self.search(unsettled, deliveryTag) else {
                return .failure(BrokerError(.preconditionFailed, "delivery tag \(deliveryTag) is unknown or already settled"))
            }
            unsettled.remove(at: index)
        }
        lastSent = now
        let settle = Settle(deliveryTag: deliveryTag, multiple: multiple)
        switch kind {
        case .ack: return .success(.ack(settle))
        case .nack(let requeue): return .success(.nack(Settle(deliveryTag: deliveryTag, multiple: multiple, requeue: requeue)))
        case .reject(let requeue): return .success(.reject(Settle(deliveryTag: deliveryTag, requeue: requeue)))
        }
    }

    private var isRecoveringOnSameEpoch: Bool {
        if case .recovering = phase { return true }
        return false
    }

    /// Binary search in an ascending deque (tags are settled mostly in order, so the head is checked first).
    private static func search(_ tags: Deque<UInt64>, _ tag: UInt64) -> Int? {
        if tags.first == tag { return 0 }
        var low = 0
        var high = tags.count - 1
        while low <= high {
            let mid = (low + high) / 2
            if tags[mid] == tag { return mid }
            if tags[mid] < tag { low = mid + 1 } else { high = mid - 1 }
        }
        return nil
    }

    // MARK: - Closing

    /// The caller closes: send close, fail what waits, and finish once the broker answers or the socket goes.
    mutating func close() -> [Action] {
        switch phase {
        case .open:
            // Requests and publishes already sent keep waiting: the broker answers them, and confirms every publish,
            // before its closeOk (§7, §9.3), and whatever is still open then fails. What was never sent fails now.
            phase = .closing
            let error = BrokerError(.connectionClosed, "connection closed by the client")
            var actions: [Action] = [.send(.close(Close(code: .normal, reason: "client closed the connection")))]
            for request in queued { actions += failCaller(request.pending.purpose, error) }
            queued.removeAll()
            for entry in held { actions.append(.publishFailed(entry.id, error)) }
            held.removeAll()
            for id in consumers.keys.sorted() { actions.append(.finishConsumer(id, error)) }
            consumers.removeAll()
            consumerByTag.removeAll()
            return actions
        case .recovering:
            phase = .closing
            var actions: [Action] = [.send(.close(Close(code: .normal, reason: "client closed the connection")))]
            actions += failAll(BrokerError(.connectionClosed, "connection closed by the client"))
            return actions
        case .connecting, .awaitingHelloOk, .awaitingAuthOk, .waitingToReconnect:
            return [.closeChannel] + terminate(BrokerError(.connectionClosed, "connection closed by the client"), byClient: true)
        case .closing, .closed:
            return []
        }
    }

    /// Ends the connection for good: everything waiting fails, consumers end, the terminal event goes out.
    private mutating func terminate(_ error: BrokerError, byClient: Bool = false) -> [Action] {
        if case .closed = phase { return [] }
        var actions = failAll(error)
        phase = .closed(error)
        closedByClient = byClient
        actions.append(.event(byClient ? .closed : .failed(error)))
        return actions
    }

    private mutating func failPending(_ error: BrokerError, into actions: inout [Action]) {
        for (_, request) in pending.sorted(by: { $0.key < $1.key }) {
            switch request.purpose {
            case .consume(let call, let consumer):
                consumers[consumer] = nil
                actions += [.fail(call, error), .finishConsumer(consumer, error)]
            case .caller(let call, _), .confirmSelect(let call), .cancel(let call, _), .get(let call, _):
                actions.append(.fail(call, error))
            case .recovery, .abandoned:
                break
            }
        }
        pending.removeAll()
    }

    private mutating func failAll(_ error: BrokerError) -> [Action] {
        var actions: [Action] = []
        failPending(error, into: &actions)
        for request in queued { actions += failCaller(request.pending.purpose, error) }
        queued.removeAll()
        for entry in unconfirmed { actions.append(.publishFailed(entry.id, error)) }
        unconfirmed.removeAll()
        for entry in held { actions.append(.publishFailed(entry.id, error)) }
        held.removeAll()
        for id in consumers.keys.sorted() { actions.append(.finishConsumer(id, error)) }
        consumers.removeAll()
        consumerByTag.removeAll()
        unsettled.removeAll()
        return actions
    }

    // MARK: - Time

    /// Called periodically: expires requests and held publishes past their deadlines, sends heartbeats and
    /// notices a silent broker.
    mutating func tick(now: NIODeadline) -> [Action] {
        var actions: [Action] = []
        for (id, request) in pending.sorted(by: { $0.key < $1.key }) {
            guard let deadline = request.deadline, deadline <= now else { continue }
            let error = BrokerError(.timeout, "no answer from the broker within \(requestTimeout.milliseconds) ms")
            switch request.purpose {
            case .caller(let call, _), .confirmSelect(let call), .cancel(let call, _), .get(let call, _):
                pending[id] = PendingRequest(purpose: .abandoned(wasConsume: false), deadline: nil)
                actions.append(.fail(call, error))
            case .consume(let call, let consumer):
                // Its consumeOk may still come: then the broker-side consumer is cancelled (see `answer`).
                pending[id] = PendingRequest(purpose: .abandoned(wasConsume: true), deadline: nil)
                consumers[consumer] = nil
                actions += [.fail(call, error), .finishConsumer(consumer, error)]
            case .recovery, .abandoned:
                break
            }
        }
        var index = 0
        while index < queued.count {
            if let deadline = queued[index].pending.deadline, deadline <= now {
                let request = queued.remove(at: index)
                actions += failCaller(request.pending.purpose,
                                      BrokerError(.timeout, "the connection did not recover within \(requestTimeout.milliseconds) ms"))
            } else {
                index += 1
            }
        }
        while let first = held.first, first.deadline <= now {
            held.removeFirst()
            let why = blocked ? "the broker kept publishers blocked" : "the connection did not recover"
            actions.append(.publishFailed(first.id, BrokerError(.timeout, "\(why) for \(publishTimeout.milliseconds) ms; the message was not sent")))
        }
        if let heartbeat, phase == .open || isRecoveringOnSameEpoch {
            if now - lastReceived > heartbeat * 2 {
                let error = BrokerError(.heartbeatTimeout, "the broker sent nothing for two heartbeat intervals")
                actions += [.closeChannel] + channelClosed(error)
            } else if now - lastSent >= .nanoseconds(heartbeat.nanoseconds / 2) {
                lastSent = now
                actions.append(.send(.heartbeat))
            }
        }
        return actions
    }

    /// Something was written (heartbeats count only silence).
    mutating func sent(now: NIODeadline) { lastSent = now }
}

extension TimeAmount {
    /// Whole milliseconds, for messages.
    var milliseconds: Int64 { nanoseconds / 1_000_000 }
}

extension ClientMessage {
    /// The same request with another request id (ids are assigned when a request is actually sent).
    func withRequestId(_ id: UInt32) -> ClientMessage {
        switch self {
        case .exchangeDeclare(var m): m.requestId = id; return .exchangeDeclare(m)
        case .exchangeDelete(var m): m.requestId = id; return .exchangeDelete(m)
        case .queueDeclare(var m): m.requestId = id; return .queueDeclare(m)
        case .queueDelete(var m): m.requestId = id; return .queueDelete(m)
        case .queuePurge(var m): m.requestId = id; return .queuePurge(m)
        case .queueBind(var m): m.requestId = id; return .queueBind(m)
        case .queueUnbind(var m): m.requestId = id; return .queueUnbind(m)
        case .consume(var m): m.requestId = id; return .consume(m)
        case .cancel(var m): m.requestId = id; return .cancel(m)
        case .get(var m): m.requestId = id; return .get(m)
        case .manage(var m): m.requestId = id; return .manage(m)
        case .confirmSelect: return .confirmSelect(requestId: id)
        case .status: return .status(requestId: id)
        case .hello, .authenticate, .heartbeat, .close, .closeOk, .publish, .ack, .nack, .reject: return self
        }
    }
}
