public import BrokerClient
public import Logging
public import WireProtocol

/// The exchanges and queues the ride services use, declared once here and by every service at start (declaring
/// is idempotent; each declaration has the same arguments wherever it is made).
///
///     trip service --trip.requested--> [ride.trips topic] --> dispatcher.trips (work queue, competing dispatchers)
///     dispatcher.trips --rejected (no driver)--> dispatcher.retry (TTL) --expired--> ride.trips again
///     dispatcher --RPC driver.nearby--> driver.rpc --reply--> the dispatcher's reply queue
///     dispatcher --trip.dispatched | trip.no_driver--> [ride.dispatch fanout] --> trip.dispatch, passenger.dispatch, driver.dispatch
///     passenger, driver services --notification.requested--> notification.requests (work queue) --> notification service
public enum RideTopology {
    public static let tripsExchange = "ride.trips"
    public static let dispatchExchange = "ride.dispatch"
    public static let dispatcherQueue = "dispatcher.trips"
    public static let retryQueue = "dispatcher.retry"
    public static let driverRPCQueue = "driver.rpc"
    public static let notificationQueue = "notification.requests"
    /// Each of these services gets its own copy of every dispatch outcome.
    public static let tripDispatchQueue = "trip.dispatch"
    public static let passengerDispatchQueue = "passenger.dispatch"
    public static let driverDispatchQueue = "driver.dispatch"

    /// Declares everything. `retryDelayMs` is the retry queue's TTL: how long the dispatcher waits before it looks
    /// for a driver again (the queue's arguments must agree wherever it is declared: keep it one setting).
    ///
    /// Then it gives the exchanges the contracts of ``RideAsyncAPI`` (with a logged warning, not an error, when the
    /// broker refuses: a service user without administrator rights, or a contract an operator changed on purpose).
    ///
    /// `quorumQueues`: every queue is declared with `x-queue-type: quorum`, for a RabbitMQ cluster (replicated
    /// queues; docs/operations.md, "Scaling out"). brokerd refuses that argument.
    public static func declare(on connection: BrokerConnection, retryDelayMs: Int64, quorumQueues: Bool = false, logger: Logger) async throws {
        try await declareTopology(on: connection, retryDelayMs: retryDelayMs, quorumQueues: quorumQueues)
        try await RideAsyncAPI.applyContracts(on: connection, logger: logger)
    }

    static func declareTopology(on connection: BrokerConnection, retryDelayMs: Int64, quorumQueues: Bool = false) async throws {
        let type: FieldTable = quorumQueues ? ["x-queue-type": .string("quorum")] : [:]
        try await connection.declareExchange(tripsExchange, type: .topic, durable: true)
        try await connection.declareExchange(dispatchExchange, type: .fanout, durable: true)
        // A trip the dispatcher rejects (no driver yet) is dead-lettered through the default exchange into the
        // retry queue, atomically in the broker: no window where it is in neither.
        try await connection.declareQueue(dispatcherQueue, durable: true, arguments: type.merging([
            "x-dead-letter-exchange": .string(""),
            "x-dead-letter-routing-key": .string(retryQueue),
        ]) { $1 })
        try await connection.bind(queue: dispatcherQueue, exchange: tripsExchange, key: TripRequested.type)
        // Nobody consumes the retry queue: its messages expire after the delay and go back to the trips exchange.
        try await connection.declareQueue(retryQueue, durable: true, arguments: type.merging([
            "x-message-ttl": .int(retryDelayMs),
            "x-dead-letter-exchange": .string(tripsExchange),
            "x-dead-letter-routing-key": .string(TripRequested.type),
        ]) { $1 })
        try await connection.declareQueue(driverRPCQueue, durable: true, arguments: type)
        try await connection.declareQueue(notificationQueue, durable: true, arguments: type)
        for queue in [tripDispatchQueue, passengerDispatchQueue, driverDispatchQueue] {
            try await connection.declareQueue(queue, durable: true, arguments: type)
            try await connection.bind(queue: queue, exchange: dispatchExchange)
        }
    }
}
