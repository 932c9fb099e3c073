import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

/// brokerctl: inspect and manage a running brokerd. This issue ships `status`; the rest has its own issue.
@main
struct Brokerctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerctl",
        abstract: "Inspect and manage a running brokerd.",
        discussion: """
            Exit codes: 0 success, 64 usage error, 69 broker unreachable, 77 access refused, 70 other errors.
            Connection flags can also come from BROKERCTL_HOST, BROKERCTL_PORT, BROKERCTL_USER, BROKERCTL_PASSWORD.
            """,
        subcommands: [Status.self])
}

/// Connection options shared by every subcommand.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Broker host (env BROKERCTL_HOST).")
    var host = ProcessInfo.processInfo.environment["BROKERCTL_HOST"] ?? "127.0.0.1"

    @Option(help: "Broker port (env BROKERCTL_PORT).")
    var port = Int(ProcessInfo.processInfo.environment["BROKERCTL_PORT"] ?? "") ?? 5680

    @Option(help: "User name (env BROKERCTL_USER).")
    var user = ProcessInfo.processInfo.environment["BROKERCTL_USER"] ?? "guest"

    @Option(help: "Password (env BROKERCTL_PASSWORD).")
    var password = ProcessInfo.processInfo.environment["BROKERCTL_PASSWORD"] ?? "guest"

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535, got \(port)") }
    }

    /// Connects, or exits with a message a person can act on.
    func connect() async throws -> BrokerConnection {
        let configuration = ClientConfiguration(host: host, port: port, user: user, password: password, clientName: "brokerctl",
                                                connectTimeout: .seconds(5), requestTimeout: .seconds(10))
        do {
            return try await BrokerConnection.connect(configuration)
        } catch let error as BrokerError {
            throw Failure(error: error, context: "\(host):\(port)")
        }
    }
}

/// A failure brokerctl reports on stderr with a matching exit code.
struct Failure: Error, CustomStringConvertible {
    var error: BrokerError
    var context: String

    var description: String {
        switch error.code {
        case .accessRefused: "brokerctl: access refused by \(context): \(error.message)"
        case .connectionClosed, .timeout: "brokerctl: cannot reach brokerd at \(context): \(error.message). Is it running?"
        default: "brokerctl: \(error.description)"
        }
    }

    var exitCode: Int32 {
        switch error.code {
        case .accessRefused: 77  // EX_NOPERM
        case .connectionClosed, .timeout: 69  // EX_UNAVAILABLE
        default: 70  // EX_SOFTWARE
        }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

extension Brokerctl {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the broker's version, uptime, connections, queues and messages.")

        @OptionGroup var connection: ConnectionOptions

        @Option(help: "Output format.")
        var format: OutputFormat = .table

        func run() async throws {
            do {
                let client = try await connection.connect()
                let status: FieldTable
                do {
                    status = try await client.status()
                } catch let error as BrokerError {
                    await client.close()
                    throw Failure(error: error, context: "\(connection.host):\(connection.port)")
                }
                await client.close()
                print(render(status))
            } catch let failure as Failure {
                FileHandle.standardError.write(Data((failure.description + "\n").utf8))
                throw ExitCode(failure.exitCode)
            }
        }

        func render(_ status: FieldTable) -> String {
            let keys = status.keys.sorted()
            switch format {
            case .json:
                let fields = keys.map { key in "\"\(key)\":\(Self.json(status[key]!))" }  // keys come from the table
                return "{" + fields.joined(separator: ",") + "}"
            case .table:
                let width = keys.map(\.count).max() ?? 0
                return keys.map { key in
                    key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + Self.text(status[key]!)  // keys come from the table
                }.joined(separator: "\n")
            }
        }

        static func text(_ value: FieldValue) -> String {
            switch value {
            case .string(let s): s
            case .int(let i): String(i)
            case .bool(let b): String(b)
            case .double(let d): String(d)
            default: json(value)
            }
        }

        static func json(_ value: FieldValue) -> String {
            switch value {
            case .string(let s):
                let data = (try? JSONSerialization.data(withJSONObject: [s], options: [.fragmentsAllowed])) ?? Data("[\"\"]".utf8)
                return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
            case .int(let i): return String(i)
            case .bool(let b): return String(b)
            case .double(let d): return String(d)
            case .bytes(let b): return "[" + b.map(String.init).joined(separator: ",") + "]"
            case .array(let values): return "[" + values.map(json).joined(separator: ",") + "]"
            case .table(let t): return "{" + t.keys.sorted().map { "\"\($0)\":\(json(t[$0]!))" }.joined(separator: ",") + "}"
            }
        }
    }
}
