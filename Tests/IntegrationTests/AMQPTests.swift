import BrokerClient
import Foundation
import NIOCore
import Testing
import WireProtocol

/// AMQP 0-9-1 against the brokerd executable (issue 16, part 3), with real clients: pika (Python, from PyPI) runs
/// Tests/Fixtures/amqp/pika_checks.py, and Debian's amqp-tools publish, get and consume. `.ci/run` installs both;
/// a machine without them fails these tests rather than skipping them.
@Suite("AMQP 0-9-1 with real clients", .timeLimit(.minutes(3)))
struct AMQPTests {
    static let pikaChecks = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/amqp/pika_checks.py")

    /// A brokerd with an AMQP listener, on ephemeral ports and a fresh data directory.
    struct Daemon {
        let process: Process
        let port: Int
        let amqpPort: Int
        let log: DaemonTests.DaemonLog
        let dataDirectory: URL
    }

    static func withDaemon<T>(_ body: (Daemon) async throws -> T) async throws -> T {
        let dataDirectory = DaemonTests.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dataDirectory) }
        let (process, port, log) = try DaemonTests.startDaemon(dataDirectory: dataDirectory, extraArguments: ["--amqp-port", "0"])
        defer { DaemonTests.stop(process) }
        guard let line = log.text.split(separator: "\n").first(where: { $0.contains("brokerd ready") }),
              let range = line.range(of: "amqp_port="), let amqpPort = Int(line[range.upperBound...].prefix(while: \.isNumber)) else {
            throw BrokerError(.notFound, "brokerd's ready line names no amqp_port; its log:\n\(log.text)")
        }
        return try await body(Daemon(process: process, port: port, amqpPort: amqpPort, log: log, dataDirectory: dataDirectory))
    }

    /// Runs a program found on PATH to completion (at most `timeout` seconds, then it is killed by its PID);
    /// stdout and stderr go to files, so a chatty child never blocks on a full pipe.
    static func runTool(_ name: String, _ arguments: [String], input: String? = nil, timeout: Double = 120) async throws
        -> (status: Int32, out: String, err: String) {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(with: Result {
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                    process.arguments = [name] + arguments
                    let base = FileManager.default.temporaryDirectory.appendingPathComponent("amqp-tool-\(UUID().uuidString)")
                    let outURL = base.appendingPathExtension("out")
                    let errURL = base.appendingPathExtension("err")
                    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
                    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
                    defer {
                        try? FileManager.default.removeItem(at: outURL)
                        try? FileManager.default.removeItem(at: errURL)
                    }
                    process.standardOutput = try FileHandle(forWritingTo: outURL)
                    process.standardError = try FileHandle(forWritingTo: errURL)
                    let stdin = Pipe()
                    process.standardInput = stdin
                    try process.run()
                    if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
                    try stdin.fileHandleForWriting.close()
                    let deadline = Date().addingTimeInterval(timeout)
                    while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
                    if process.isRunning {
                        kill(process.processIdentifier, SIGKILL)
                        process.waitUntilExit()
                        throw BrokerError(.timeout, "\(name) \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s")
                    }
                    process.waitUntilExit()
                    return (process.terminationStatus, (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                            (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
                })
            }.start()
        }
    }

    static func pika(_ daemon: Daemon, _ check: String, _ arguments: [String] = []) async throws -> String {
        let (status, out, err) = try await runTool("python3", [pikaChecks.path, "\(daemon.amqpPort)", check] + arguments)
        #expect(status == 0, "pika check \(check) failed:\n\(out)\n\(err)")
        return out
    }

    @Test("pika: confirms, consume, get, reject, nack, recover, returns, routing, RPC, exclusivity, errors, auth, heartbeats, large bodies",
          arguments: ["confirm_consume", "get_reject_nack", "ack_multiple", "recover", "mandatory_return", "overflow_nack", "topic_fanout",
                      "rpc", "exclusive", "errors", "auth", "heartbeat", "large_message"])
    func pikaCheck(_ check: String) async throws {
        try await Self.withDaemon { daemon in
            _ = try await Self.pika(daemon, check)
            #expect(daemon.process.isRunning, "brokerd exited during \(check); its log:\n\(daemon.log.text)")
        }
    }

    @Test("a message published natively reaches an AMQP consumer with its properties, and the reverse")
    func crossProtocol() async throws {
        try await Self.withDaemon { daemon in
            try await withConnection(ClientConfiguration(port: daemon.port)) { native in
                try await native.declareQueue("to-amqp")
                try await native.declareQueue("from-amqp")
                try await native.enableConfirms()
                let properties = MessageProperties(
                    messageId: "n-1", correlationId: "c-1", replyTo: "r", contentType: "application/json", type: "trip.requested",
                    typeVersion: 2, timestamp: 1_700_000_000_123, expiration: 60_000, persistent: true, priority: 4,
                    headers: ["int": .int(7), "big": .int(1 << 40), "text": .string("héllo"), "flag": .bool(true), "ratio": .double(2.0),
                              "nested": .table(["k": .string("v")]), "list": .array([.int(1), .string("two")])],
                    typeMinorVersion: 1)
                try await native.publish(routingKey: "to-amqp", body: #"{"trip":2}"#, properties: properties)

                let json = try await Self.pika(daemon, "cross_consume", ["to-amqp"])
                let seen = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
                #expect(seen["message_id"] as? String == "n-1")
                #expect(seen["correlation_id"] as? String == "c-1")
                #expect(seen["reply_to"] as? String == "r")
                #expect(seen["content_type"] as? String == "application/json")
                #expect(seen["type"] as? String == "trip.requested")
                #expect(seen["timestamp"] as? Int == 1_700_000_000)  // AMQP timestamps are seconds
                #expect(seen["expiration"] as? String == "60000")
                #expect(seen["delivery_mode"] as? Int == 2)
                #expect(seen["priority"] as? Int == 4)
                #expect(seen["body"] as? String == #"{"trip":2}"#)
                #expect(seen["routing_key"] as? String == "to-amqp")
                let headers = try #require(seen["headers"] as? [String: Any])
                #expect(headers["int"] as? Int == 7)
                #expect(headers["big"] as? Int == 1 << 40)
                #expect(headers["text"] as? String == "héllo")
                #expect(headers["flag"] as? Bool == true)
                // pika reads a double header as a whole number (its decoder truncates): 2.0 arrives as 2.
                #expect(headers["ratio"] as? Int == 2)
                #expect((headers["nested"] as? [String: Any])?["k"] as? String == "v")
                #expect((headers["list"] as? [Any])?.count == 2)
                #expect(headers["x-type-version"] as? Int == 2)
                #expect(headers["x-type-minor-version"] as? Int == 1)

                _ = try await Self.pika(daemon, "cross_publish", ["from-amqp"])
                let message = try #require(try await native.get(queue: "from-amqp", noAck: true))
                let p = message.properties
                #expect(message.bodyString == #"{"trip":1}"#)
                #expect(p.messageId == "msg-1" && p.correlationId == "corr-1" && p.replyTo == "replies")
                #expect(p.contentType == "application/json" && p.type == "trip.requested")
                #expect(p.persistent && p.priority == 3 && p.expiration == 60_000)
                #expect(p.timestamp == 1_700_000_000_000)
                #expect(p.typeVersion == 2, "the AMQP header x-type-version becomes the native type version")
                let h = try #require(p.headers)
                #expect(h["int"] == .int(42) && h["big"] == .int(1 << 40) && h["text"] == .string("héllo"))
                #expect(h["flag"] == .bool(true) && h["ratio"] == .double(0.5), "an AMQP decimal is a native double")
                #expect(h["nested"] == .table(["k": .string("v")]) && h["list"] == .array([.int(1), .string("two")]))
                #expect(h["x-amqp-content-encoding"] == .string("gzip"))
                #expect(h["x-amqp-user-id"] == .string("guest"))
                #expect(h["x-amqp-app-id"] == .string("trip-service"))
                #expect(h["x-type-version"] == nil)
            }
        }
    }

    @Test("amqp-tools (librabbitmq's command-line clients) declare, publish, get and consume")
    func amqpTools() async throws {
        try await Self.withDaemon { daemon in
            let url = "--url=amqp://guest:guest@127.0.0.1:\(daemon.amqpPort)"
            let declared = try await Self.runTool("amqp-declare-queue", [url, "-q", "tools", "-d"])
            #expect(declared.status == 0 && declared.out.trimmingCharacters(in: .whitespacesAndNewlines) == "tools", "\(declared)")
            let published = try await Self.runTool("amqp-publish", [url, "-r", "tools", "-p", "-C", "text/plain"], input: "from amqp-publish")
            #expect(published.status == 0, "\(published)")
            let got = try await Self.runTool("amqp-get", [url, "-q", "tools"])
            #expect(got.status == 0 && got.out == "from amqp-publish", "\(got)")
            let empty = try await Self.runTool("amqp-get", [url, "-q", "tools"])
            #expect(empty.status != 0, "amqp-get on an empty queue must fail")
            for i in 1...3 {
                let each = try await Self.runTool("amqp-publish", [url, "-r", "tools", "-b", "m\(i)"])
                #expect(each.status == 0, "\(each)")
            }
            let consumed = try await Self.runTool("amqp-consume", [url, "-q", "tools", "-c", "3", "cat"])
            #expect(consumed.status == 0 && consumed.out == "m1m2m3", "\(consumed)")
            // And the native side sees the queue as AMQP left it.
            try await withConnection(ClientConfiguration(port: daemon.port)) { native in
                let left = try await native.get(queue: "tools", noAck: true)
                #expect(left == nil)
            }
        }
    }
}
