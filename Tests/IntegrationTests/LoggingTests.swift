import BrokerClient
import BrokerCore
import BrokerServer
import Foundation
import Testing
import WireProtocol

@Suite("What operators see in the log", .timeLimit(.minutes(1)))
struct LoggingTests {
    @Test("a clean close is logged with client name, user, peer and reason; a failed login with the user tried")
    func connectionLifecycle() async throws {
        let log = CapturedLog()
        try await withBroker(logger: log.logger) { _, config in
            var named = config
            named.clientName = "trip-service"
            let connection = try await BrokerConnection.connect(named)
            await connection.close()
            #expect(try await eventually { !log.lines("connection closed").isEmpty })
            let closed = try #require(log.lines("connection closed").first)
            #expect(closed.contains("client=trip-service"), "\(closed)")
            #expect(closed.contains("user=guest"), "\(closed)")
            #expect(closed.contains("peer=127.0.0.1:"), "\(closed)")
            #expect(closed.contains("reason=\"client closed the connection (200: client closed the connection)\""), "\(closed)")
            #expect(closed.contains("duration_s="), "\(closed)")

            var wrong = withoutRecovery(config)
            wrong.user = "mallory"
            wrong.password = "guess"
            await expectBrokerError(.accessRefused) { _ = try await BrokerConnection.connect(wrong) }
            #expect(try await eventually { !log.lines("login failed").isEmpty })
            #expect(log.lines("login failed").first?.contains("user=mallory") == true, "\(log.lines("login failed"))")
            // Every line has a sub-second UTC time.
            #expect(log.all.allSatisfy { $0.hasPrefix("time=") && $0.prefix(33).contains(".") && $0.prefix(33).contains("Z") })
        }
    }

    @Test("management actions leave an audit trail: who, from where, what, on which object, how it ended; never a password")
    func auditTrail() async throws {
        let log = CapturedLog()
        try await withBroker(logger: log.logger) { _, config in
            try await withConnection(config) { admin in
                _ = try await admin.manage("user.add", ["name": .string("alice"), "password": .string("s3cret-pass")])
                await expectBrokerError(.notFound) { _ = try await admin.manage("user.delete", ["name": .string("nobody")]) }
                _ = try await admin.list("queues")  // read-only: not audited
                // A contract (with its schema) is one short object, not the whole table.
                try await admin.declareExchange("ride.trips", type: .topic)
                try await admin.applyContract(ExchangeContract(exchange: "ride.trips", types: [MessageTypeContract(
                    name: "trip.requested", versions: [TypeVersionContract(version: ContractVersion(2), schema: .object(["type": "object"]))])]))
            }
            let actions = log.lines("management action")
            #expect(actions.count == 3, "\(actions)")
            #expect(actions.last?.contains(#"object="contract={exchange=ride.trips types=[1]} force=false""#) == true, "\(actions)")
            let added = try #require(actions.first)
            for part in ["by_user=guest", "by_client=tests", "action=user.add", "object=\"name=alice\"", "outcome=done", "peer=127.0.0.1:"] {
                #expect(added.contains(part), "\(part) missing in \(added)")
            }
            #expect(actions[1].contains("outcome=\"refused: 404"), "\(actions)")
            #expect(!log.all.contains { $0.contains("s3cret-pass") })
        }
    }

    @Test("printing the service or the user store shows no salt and no hash")
    func noSecretsInDumps() {
        let service = BrokerService(configuration: ServerConfiguration(), logger: CapturedLog().logger)
        #expect(!"\(service)".contains("salt"))
        let users = UserStore()
        let printed = String(describing: users) + String(reflecting: users.users)
        #expect(!printed.contains("salt") && !printed.contains("hash:"), "\(printed)")
        var dumped = ""
        dump(users.users, to: &dumped)
        #expect(!dumped.contains("salt"), "\(dumped)")
    }
}
