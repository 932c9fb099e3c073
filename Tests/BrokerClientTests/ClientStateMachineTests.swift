@testable import BrokerClient
import NIOCore
import Testing
import WireProtocol

/// The client's connection state machine, driven by plain values: no sockets, no clocks.
@Suite struct ClientStateMachineTests {
    typealias Machine = ClientStateMachine

    static let helloOk = HelloOk(version: .v1_0, maxFrameSize: 1 << 20, heartbeatSeconds: 0, serverName: "brokerd", mechanisms: ["PLAIN"])
    static let auth = Authenticate(user: "guest", password: "guest")
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func machine(endpoints: Int = 1, recovery: RecoveryPolicy? = .default, republish: Bool = true) -> Machine {
        Machine(endpointCount: endpoints, hello: Hello(clientName: "test"), authenticate: auth, recovery: recovery,
                requestTimeout: .seconds(5), publishTimeout: .seconds(10), republishUnconfirmed: republish)
    }

    /// Runs the handshake to `open` and returns the machine.
    func openMachine(recovery: RecoveryPolicy? = .default, republish: Bool = true, heartbeat: UInt16 = 0) -> Machine {
        var m = Self.machine(recovery: recovery, republish: republish)
        #expect(m.start() == .connect(endpoint: 0))
        #expect(m.channelActive(now: t0) == [.sendHello(Hello(clientName: "test"))])
        #expect(m.received(.helloOk(Self.helloOk), now: t0) == [.send(.authenticate(Self.auth))])
        let ok = AuthOk(connectionId: 1, maxFrameSize: 1 << 20, heartbeatSeconds: heartbeat)
        #expect(m.received(.authOk(ok), now: t0) == [.opened(Self.helloOk, ok)])
        #expect(m.isOpen)
        return m
    }

    /// Reconnects a machine waiting after a drop, up to the first recovery requests.
    func reconnect(_ m: inout Machine, attempt: Int = 1) -> [Machine.Action] {
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
        #expect(m.channelActive(now: t0) == [.sendHello(Hello(clientName: "test"))])
        #expect(m.received(.helloOk(Self.helloOk), now: t0) == [.send(.authenticate(Self.auth))])
        return m.received(.authOk(AuthOk(connectionId: 2, maxFrameSize: 1 << 20, heartbeatSeconds: 0)), now: t0)
    }

    static func requestId(_ action: Machine.Action) -> UInt32? {
        guard case .send(let message) = action else { return nil }
        switch message {
        case .exchangeDeclare(let m): return m.requestId
        case .queueDeclare(let m): return m.requestId
        case .queueBind(let m): return m.requestId
        case .consume(let m): return m.requestId
        case .cancel(let m): return m.requestId
        case .confirmSelect(let id): return id
        case .get(let m): return m.requestId
        default: return nil
        }
    }

    @Test func requestIsAnsweredByItsId() {
        var m = openMachine()
        let actions = m.request(7, .queuePurge(QueuePurge(requestId: 0, name: "q")), now: t0)
        #expect(actions == [.send(.queuePurge(QueuePurge(requestId: 1, name: "q")))])
        #expect(m.received(.countOk(requestId: 2, count: 3), now: t0) == [])  // nobody asked for 2
        #expect(m.received(.countOk(requestId: 1, count: 3), now: t0) == [.succeed(7, .countOk(requestId: 1, count: 3))])
        #expect(m.pending.isEmpty)
    }

    @Test func errorFrameFailsItsRequestAndUnaddressedErrorsGoToTheStream() {
        var m = openMachine()
        _ = m.request(1, .queuePurge(QueuePurge(requestId: 0, name: "missing")), now: t0)
        let error = BrokerError(.notFound, "no queue 'missing'")
        #expect(m.received(.error(ErrorFrame(requestId: 1, code: .notFound, text: "no queue 'missing'")), now: t0) == [.fail(1, error)])
        #expect(m.received(.error(ErrorFrame(requestId: 0, code: .notFound, text: "x")), now: t0) == [.asyncError(BrokerError(.notFound, "x"))])
    }

    /// The old hole: a consume whose answer came after the caller gave up registered a consumer nobody held.
    @Test func timedOutConsumeIsCancelledAtTheBrokerWhenItsAnswerComesLate() {
        var m = openMachine()
        let sent = m.consume(1, consumer: 100, Consume(requestId: 0, queue: "q", prefetch: 10), now: t0)
        #expect(sent == [.send(.consume(Consume(requestId: 1, queue: "q", prefetch: 10)))])
        #expect(m.tick(now: t0 + .seconds(4)) == [])
        let expired = m.tick(now: t0 + .seconds(6))
        #expect(expired == [.fail(1, BrokerError(.timeout, "no answer from the broker within 5000 ms")),
                            .finishConsumer(100, BrokerError(.timeout, "no answer from the broker within 5000 ms"))])
        #expect(m.consumers.isEmpty)
        let late = m.received(.consumeOk(ConsumeOk(requestId: 1, consumerTag: 42)), now: t0 + .seconds(7))
        #expect(late == [.send(.cancel(Cancel(requestId: 2, consumerTag: 42)))])
        // Deliveries for the orphan are dropped, not handed to anyone, and need no settling here.
        let deliver = Deliver(consumerTag: 42, deliveryTag: 1, redelivered: false, exchange: "", routingKey: "q", properties: .empty,
                              body: ByteBuffer(string: "x"))
        #expect(m.received(.deliver(deliver), now: t0) == [])
        #expect(m.unsettled.isEmpty)
    }

    @Test func timedOutRequestDropsItsLateAnswer() {
        var m = openMachine()
        _ = m.request(5, .queuePurge(QueuePurge(requestId: 0, name: "q")), now: t0)
        #expect(m.tick(now: t0 + .seconds(6)).count == 1)
        #expect(m.received(.countOk(requestId: 1, count: 0), now: t0) == [])
        #expect(m.pending.isEmpty)
    }

    @Test func deliveriesAreSettledOnceAndOnlyOnTheirConnection() {
        var m = openMachine()
        _ = m.consume(1, consumer: 100, Consume(requestId: 0, queue: "q", prefetch: 10), now: t0)
        _ = m.received(.consumeOk(ConsumeOk(requestId: 1, consumerTag: 9)), now: t0)
        for tag in 1...3 as ClosedRange<UInt64> {
            let deliver = Deliver(consumerTag: 9, deliveryTag: tag, redelivered: false, exchange: "", routingKey: "q", properties: .empty,
                                  body: ByteBuffer())
            #expect(m.received(.deliver(deliver), now: t0) == [.deliver(100, deliver)])
        }
        let epoch = m.epoch
        #expect(m.settle(epoch: epoch, deliveryTag: 2, multiple: false, .ack, now: t0) == .success(.ack(Settle(deliveryTag: 2))))
        #expect(m.settle(epoch: epoch, deliveryTag: 2, multiple: false, .ack, now: t0)
            == .failure(BrokerError(.preconditionFailed, "delivery tag 2 is unknown or already settled")))
        #expect(m.settle(epoch: epoch, deliveryTag: 3, multiple: true, .ack, now: t0)
            == .success(.ack(Settle(deliveryTag: 3, multiple: true))))
        #expect(m.unsettled.isEmpty)

        // A delivery from before a reconnect is refused locally.
        let deliver = Deliver(consumerTag: 9, deliveryTag: 4, redelivered: false, exchange: "", routingKey: "q", properties: .empty,
                              body: ByteBuffer())
        _ = m.received(.deliver(deliver), now: t0)
        _ = m.channelClosed(nil)
        let recovery = reconnect(&m)
        #expect(recovery.count == 1)  // the consumer, registered again
        guard case .failure(let error) = m.settle(epoch: epoch, deliveryTag: 4, multiple: false, .ack, now: t0) else {
            Issue.record("a stale tag was accepted")
            return
        }
        #expect(error.code == .staleDelivery)
    }

    @Test func recoveryRedeclaresTopologyFollowsServerNamesAndResumesConsumersAndPublishes() {
        var m = openMachine()
        // Topology: an exchange, a server-named queue bound to it, a consumer with prefetch 7, confirms on.
        let exchange = ExchangeDeclare(requestId: 0, name: "dispatch", kind: .fanout, durable: true)
        _ = m.request(1, .exchangeDeclare(exchange), recording: .declareExchange(exchange), now: t0)
        _ = m.received(.ok(requestId: 1), now: t0)
        let queue = QueueDeclare(requestId: 0, name: "", exclusive: true)
        _ = m.request(2, .queueDeclare(queue), recording: .declareQueue(queue, serverNamed: true), now: t0)
        _ = m.received(.queueDeclareOk(QueueDeclareOk(requestId: 2, name: "amq.gen-1", messageCount: 0, consumerCount: 0)), now: t0)
        let binding = QueueBinding(requestId: 0, queue: "amq.gen-1", exchange: "dispatch", bindingKey: "")
        _ = m.request(3, .queueBind(binding), recording: .bind(binding), now: t0)
        _ = m.received(.ok(requestId: 3), now: t0)
        _ = m.consume(4, consumer: 100, Consume(requestId: 0, queue: "amq.gen-1", prefetch: 7), now: t0)
        _ = m.received(.consumeOk(ConsumeOk(requestId: 4, consumerTag: 1)), now: t0)
        _ = m.enableConfirms(5, now: t0)
        _ = m.received(.ok(requestId: 5), now: t0)
        let first = Publish(exchange: "dispatch", routingKey: "", body: ByteBuffer(string: "1"))
        let second = Publish(exchange: "dispatch", routingKey: "", body: ByteBuffer(string: "2"))
        #expect(m.publish(200, first, now: t0) == [.send(.publish(first))])
        #expect(m.publish(201, second, now: t0) == [.send(.publish(second))])
        #expect(m.received(.confirmAck(Confirm(sequence: 1, multiple: false)), now: t0) == [.confirmed(200)])

        // The broker goes away.
        let lost = BrokerError(.connectionForced, "broker shutting down")
        let dropped = m.received(.close(Close(code: .connectionForced, reason: "broker shutting down")), now: t0)
        #expect(dropped == [.send(.closeOk), .closeChannel, .event(.disconnected(lost)), .event(.reconnecting(attempt: 1, lastError: lost)),
                            .scheduleReconnect(attempt: 1)])
        // Publishes and requests made meanwhile wait.
        let third = Publish(exchange: "dispatch", routingKey: "", body: ByteBuffer(string: "3"))
        #expect(m.publish(202, third, now: t0) == [])
        #expect(m.request(6, .queuePurge(QueuePurge(requestId: 0, name: "other")), now: t0) == [])

        // A failed attempt backs off again.
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
        let refused = BrokerError(.connectionClosed, "refused")
        #expect(m.connectFailed(refused) == [.event(.reconnecting(attempt: 2, lastError: refused)), .scheduleReconnect(attempt: 2)])

        // Stage 1: confirm mode, the exchange, the queue (asking for a new server name).
        let stage1 = reconnect(&m, attempt: 2)
        #expect(stage1.count == 3)
        #expect(stage1[0] == .send(.confirmSelect(requestId: Self.requestId(stage1[0])!)))
        #expect(stage1[1] == .send(.exchangeDeclare(ExchangeDeclare(requestId: Self.requestId(stage1[1])!, name: "dispatch", kind: .fanout,
                                                                    durable: true))))
        #expect(stage1[2] == .send(.queueDeclare(QueueDeclare(requestId: Self.requestId(stage1[2])!, name: "", exclusive: true))))
        #expect(m.received(.ok(requestId: Self.requestId(stage1[0])!), now: t0) == [])
        #expect(m.received(.ok(requestId: Self.requestId(stage1[1])!), now: t0) == [])
        let stage2 = m.received(.queueDeclareOk(QueueDeclareOk(requestId: Self.requestId(stage1[2])!, name: "amq.gen-2", messageCount: 0,
                                                               consumerCount: 0)), now: t0)
        // Stage 2: the binding and the consumer follow the new name; the prefetch is kept.
        #expect(stage2.count == 2)
        #expect(stage2[0] == .send(.queueBind(QueueBinding(requestId: Self.requestId(stage2[0])!, queue: "amq.gen-2", exchange: "dispatch",
                                                           bindingKey: ""))))
        #expect(stage2[1] == .send(.consume(Consume(requestId: Self.requestId(stage2[1])!, queue: "amq.gen-2", prefetch: 7))))
        #expect(m.received(.ok(requestId: Self.requestId(stage2[0])!), now: t0) == [])
        let done = m.received(.consumeOk(ConsumeOk(requestId: Self.requestId(stage2[1])!, consumerTag: 3)), now: t0)
        // Recovered: the queued request, then the unconfirmed publish, then the one made while down.
        #expect(done.count == 4)
        #expect(done[0] == .event(.recovered))
        guard case .send(.queuePurge) = done[1] else { Issue.record("queued request not sent: \(done[1])"); return }
        #expect(done[2] == .send(.publish(second)))
        #expect(done[3] == .send(.publish(third)))
        #expect(m.queue(of: 100) == "amq.gen-2")
        // Sequence numbers start again on the new connection.
        #expect(m.received(.confirmAck(Confirm(sequence: 2, multiple: true)), now: t0) == [.confirmed(201), .confirmed(202)])
        // Deliveries under the new tag reach the same consumer.
        let deliver = Deliver(consumerTag: 3, deliveryTag: 1, redelivered: true, exchange: "dispatch", routingKey: "", properties: .empty,
                              body: ByteBuffer())
        #expect(m.received(.deliver(deliver), now: t0) == [.deliver(100, deliver)])
    }

    @Test func unconfirmedPublishesFailAtADropWhenRepublishingIsOff() {
        var m = openMachine(republish: false)
        _ = m.enableConfirms(1, now: t0)
        _ = m.received(.ok(requestId: 1), now: t0)
        _ = m.publish(10, Publish(exchange: "", routingKey: "q", body: ByteBuffer()), now: t0)
        let actions = m.channelClosed(nil)
        #expect(actions.contains { if case .publishFailed(10, let e) = $0 { e.code == .connectionClosed } else { false } })
        #expect(m.unconfirmed.isEmpty)
    }

    @Test func publishesWaitingForRecoveryTimeOut() {
        var m = openMachine()
        _ = m.channelClosed(nil)
        #expect(m.publish(10, Publish(exchange: "", routingKey: "q", body: ByteBuffer()), now: t0) == [])
        #expect(m.tick(now: t0 + .seconds(9)) == [])
        let expired = m.tick(now: t0 + .seconds(11))
        #expect(expired.count == 1)
        guard case .publishFailed(10, let error) = expired.first else { Issue.record("\(expired)"); return }
        #expect(error.code == .timeout)
    }

    @Test func retryBudgetEndsInATerminalFailure() {
        var m = openMachine(recovery: RecoveryPolicy(maximumAttempts: 2))
        _ = m.consume(1, consumer: 100, Consume(requestId: 0, queue: "q"), now: t0)
        _ = m.received(.consumeOk(ConsumeOk(requestId: 1, consumerTag: 1)), now: t0)
        _ = m.channelClosed(nil)
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
        let refused = BrokerError(.connectionClosed, "refused")
        #expect(m.connectFailed(refused) == [.event(.reconnecting(attempt: 2, lastError: refused)), .scheduleReconnect(attempt: 2)])
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
        let final = m.connectFailed(refused)
        let terminal = BrokerError(.connectionClosed, "gave up reconnecting after 2 attempt(s): refused")
        #expect(final == [.finishConsumer(100, terminal), .event(.failed(terminal))])
        #expect(m.isTerminal)
        #expect(m.publish(5, Publish(exchange: "", routingKey: "q", body: ByteBuffer()), now: t0) == [.publishFailed(5, terminal)])
    }

    @Test func firstConnectTriesEachEndpointInTurn() {
        var m = Self.machine(endpoints: 3)
        #expect(m.start() == .connect(endpoint: 0))
        let refused = BrokerError(.connectionClosed, "refused")
        #expect(m.connectFailed(refused) == [.connect(endpoint: 1)])
        #expect(m.connectFailed(refused) == [.connect(endpoint: 2)])
        #expect(m.connectFailed(refused) == [.event(.failed(refused))])
    }

    @Test func reconnectsGoToTheEndpointsInTurn() {
        var m = Machine(endpointCount: 2, hello: Hello(clientName: "test"), authenticate: Self.auth, recovery: .default,
                        requestTimeout: .seconds(5), publishTimeout: .seconds(5), republishUnconfirmed: true)
        _ = m.start()
        _ = m.channelActive(now: t0)
        _ = m.received(.helloOk(Self.helloOk), now: t0)
        _ = m.received(.authOk(AuthOk(connectionId: 1, maxFrameSize: 1 << 20, heartbeatSeconds: 0)), now: t0)
        _ = m.channelClosed(nil)
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 1)])
        _ = m.connectFailed(BrokerError(.connectionClosed, "refused"))
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
    }

    @Test func anErrorTheClientCausedIsNotRecovered() {
        var m = openMachine()
        let actions = m.received(.close(Close(code: .accessRefused, reason: "user deleted")), now: t0)
        #expect(actions == [.send(.closeOk), .closeChannel, .event(.failed(BrokerError(.accessRefused, "user deleted")))])
        #expect(m.isTerminal)
    }

    @Test func withoutRecoveryADropIsTerminal() {
        var m = openMachine(recovery: nil)
        _ = m.request(1, .queuePurge(QueuePurge(requestId: 0, name: "q")), now: t0)
        let lost = BrokerError(.connectionClosed, "the broker closed the connection")
        #expect(m.channelClosed(nil) == [.fail(1, lost), .event(.failed(lost))])
    }

    @Test func closeByTheCallerEndsWithoutReconnecting() {
        var m = openMachine()
        _ = m.request(1, .queuePurge(QueuePurge(requestId: 0, name: "q")), now: t0)
        let closing = m.close()
        let closedByClient = BrokerError(.connectionClosed, "connection closed by the client")
        // The request was sent: the broker answers it before its closeOk, so it waits; unanswered by then, it fails.
        #expect(closing == [.send(.close(Close(code: .normal, reason: "client closed the connection")))])
        #expect(m.received(.closeOk, now: t0) == [.closeChannel, .fail(1, closedByClient), .event(.closed)])
        #expect(m.closedByClient)
    }

    /// The broker confirms every publish sent before a close ahead of its closeOk (protocol §7), so a close keeps
    /// them waiting for it; publishes held back during an alarm were never sent and fail at once.
    @Test func closeKeepsWhatWasSentWaitingForTheBrokersAnswer() {
        var m = openMachine()
        _ = m.enableConfirms(1, now: t0)
        _ = m.received(.ok(requestId: 1), now: t0)
        let publish = Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "x"))
        #expect(m.publish(10, publish, now: t0) == [.send(.publish(publish))])
        #expect(m.publish(11, publish, now: t0) == [.send(.publish(publish))])
        #expect(m.publish(12, publish, now: t0) == [.send(.publish(publish))])
        #expect(m.received(.connectionBlocked(reason: "memory"), now: t0) == [.flow(.blocked(reason: "memory"))])
        #expect(m.publish(13, publish, now: t0) == [])  // held: never sent
        #expect(m.closeAwaitsBroker)
        let closedByClient = BrokerError(.connectionClosed, "connection closed by the client")
        #expect(m.close() == [.send(.close(Close(code: .normal, reason: "client closed the connection"))), .publishFailed(13, closedByClient)])
        // The alarm clears; the broker reads the publishes and the close, confirms two and nacks one, then closeOk.
        #expect(m.received(.connectionUnblocked, now: t0) == [.flow(.unblocked)])
        #expect(m.received(.confirmAck(Confirm(sequence: 2, multiple: true)), now: t0) == [.confirmed(10), .confirmed(11)])
        let refused = m.received(.confirmNack(Confirm(sequence: 3, multiple: false, code: .resourceError, text: "full")), now: t0)
        #expect(refused == [.publishFailed(12, BrokerError(.resourceError, "publish refused by the broker: full"))])
        #expect(!m.closeAwaitsBroker)
        #expect(m.received(.closeOk, now: t0) == [.closeChannel, .event(.closed)])
    }

    /// Without confirms the client cannot know what the broker read; during an alarm a close waits the long timeout.
    @Test func closeWithoutConfirmsWaitsLongOnlyWhileBlocked() {
        var m = openMachine()
        let publish = Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "x"))
        #expect(m.publish(10, publish, now: t0) == [.send(.publish(publish)), .written(10)])
        #expect(!m.closeAwaitsBroker)
        _ = m.received(.connectionBlocked(reason: "memory"), now: t0)
        #expect(m.closeAwaitsBroker)
        _ = m.received(.connectionUnblocked, now: t0)
        #expect(!m.closeAwaitsBroker)
    }

    @Test func blockedPublishersWaitAndResume() {
        var m = openMachine()
        let publish = Publish(exchange: "", routingKey: "q", body: ByteBuffer(string: "x"))
        #expect(m.received(.connectionBlocked(reason: "disk"), now: t0) == [.flow(.blocked(reason: "disk"))])
        #expect(m.publish(1, publish, now: t0) == [])
        #expect(m.received(.connectionUnblocked, now: t0) == [.flow(.unblocked), .send(.publish(publish)), .written(1)])
    }

    @Test func aSilentBrokerIsNoticedByHeartbeat() {
        var m = openMachine(heartbeat: 2)
        #expect(m.tick(now: t0 + .milliseconds(1500)) == [.send(.heartbeat)])
        let actions = m.tick(now: t0 + .milliseconds(4100))
        let error = BrokerError(.heartbeatTimeout, "the broker sent nothing for two heartbeat intervals")
        #expect(actions == [.closeChannel, .event(.disconnected(error)), .event(.reconnecting(attempt: 1, lastError: error)),
                            .scheduleReconnect(attempt: 1)])
    }

    @Test func autoDeleteQueueIsForgottenWithItsLastConsumer() {
        var m = openMachine()
        let queue = QueueDeclare(requestId: 0, name: "replies", autoDelete: true)
        _ = m.request(1, .queueDeclare(queue), recording: .declareQueue(queue, serverNamed: false), now: t0)
        _ = m.received(.queueDeclareOk(QueueDeclareOk(requestId: 1, name: "replies", messageCount: 0, consumerCount: 0)), now: t0)
        _ = m.consume(2, consumer: 100, Consume(requestId: 0, queue: "replies"), now: t0)
        _ = m.received(.consumeOk(ConsumeOk(requestId: 2, consumerTag: 1)), now: t0)
        #expect(m.recordedQueueNames == ["replies"])
        _ = m.cancel(3, consumer: 100, now: t0)
        #expect(m.received(.ok(requestId: 3), now: t0) == [.succeed(3, .ok(requestId: 3)), .finishConsumer(100, nil)])
        #expect(m.recordedQueueNames.isEmpty)
    }

    @Test func backoffGrowsIsCappedAndJittered() {
        let policy = RecoveryPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(1), multiplier: 2, jitter: 0.5)
        #expect(policy.delay(attempt: 1, random: 0) == .milliseconds(100))
        #expect(policy.delay(attempt: 3, random: 0) == .milliseconds(400))
        #expect(policy.delay(attempt: 10, random: 0) == .seconds(1))
        #expect(policy.delay(attempt: 10, random: 0.999_999) > .milliseconds(500))
        #expect(policy.delay(attempt: 10, random: 0.999_999) <= .milliseconds(501))
        #expect(policy.delay(attempt: 1_000_000, random: 0) == .seconds(1))
        #expect(RecoveryPolicy(maximumAttempts: 3).allows(attempt: 3))
        #expect(!RecoveryPolicy(maximumAttempts: 3).allows(attempt: 4))
    }
}

extension ClientStateMachineTests {
    @Test func aConsumeMadeWhileDisconnectedIsSentOnceNotAlsoResumed() {
        var m = openMachine()
        _ = m.channelClosed(nil)
        #expect(m.consume(1, consumer: 100, Consume(requestId: 0, queue: "q", prefetch: 5), now: t0) == [])
        let recovery = reconnect(&m)
        // No topology and no registered consumer: recovery is done at once, then the queued consume goes out, once.
        #expect(recovery.count == 2)
        #expect(recovery.first == .event(.recovered))
        guard case .send(.consume(let consume)) = recovery.last else { Issue.record("\(recovery)"); return }
        #expect(consume.prefetch == 5)
        #expect(m.received(.consumeOk(ConsumeOk(requestId: consume.requestId, consumerTag: 4)), now: t0)
            == [.succeed(1, .consumeOk(ConsumeOk(requestId: consume.requestId, consumerTag: 4)))])
    }

    @Test func aConsumerCancelledWhileBeingResumedIsCancelledAtTheBroker() {
        var m = openMachine()
        _ = m.consume(1, consumer: 100, Consume(requestId: 0, queue: "q"), now: t0)
        _ = m.received(.consumeOk(ConsumeOk(requestId: 1, consumerTag: 1)), now: t0)
        _ = m.channelClosed(nil)
        let resume = reconnect(&m)
        guard case .send(.consume(let consume)) = resume.first, resume.count == 1 else { Issue.record("\(resume)"); return }
        // The caller cancels before the broker answered the resumed consume: it ends locally at once...
        #expect(m.cancel(2, consumer: 100, now: t0) == [.succeed(2, .ok(requestId: 0)), .finishConsumer(100, nil)])
        // ...and when the broker registers it, the client cancels it there, then recovery completes.
        let late = m.received(.consumeOk(ConsumeOk(requestId: consume.requestId, consumerTag: 7)), now: t0)
        #expect(late.count == 2)
        guard case .send(.cancel(let cancel)) = late.first else { Issue.record("\(late)"); return }
        #expect(cancel.consumerTag == 7)
        #expect(late.last == .event(.recovered))
    }

    @Test func accessRefusedOnReconnectIsTerminal() {
        var m = openMachine()
        _ = m.channelClosed(nil)
        #expect(m.reconnectTimerFired() == [.connect(endpoint: 0)])
        _ = m.channelActive(now: t0)
        _ = m.received(.helloOk(Self.helloOk), now: t0)
        let actions = m.received(.close(Close(code: .accessRefused, reason: "user 'guest' was deleted")), now: t0)
        let error = BrokerError(.accessRefused, "the broker refused this client's credentials on reconnect: user 'guest' was deleted")
        #expect(actions == [.send(.closeOk), .closeChannel, .event(.failed(error))])
    }
}
