import ArgumentParser
import BrokerClient
import Foundation
import Logging
import WireProtocol

/// brokerctl: inspect and manage a running brokerd over its own protocol (docs/operations.md, "brokerctl").
@main
struct Brokerctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brokerctl",
        abstract: "Inspect and manage a running brokerd.",
        discussion: """
            Connects to brokerd over its protocol as an administrator (the default user guest/guest works from \
            loopback only). Connection flags go before or after the subcommand (brokerctl --port 5681 status); \
            they can also come from BROKERCTL_HOST, BROKERCTL_PORT, BROKERCTL_USER and BROKERCTL_PASSWORD.

            Exit codes:
              0   success
              64  usage error (unknown flag, bad value)
              65  the broker refused the request (not found, invalid, precondition)
              69  the broker cannot be reached, or the connection was lost
              70  any other error
              77  access refused (wrong credentials, or the user is not an administrator)

            Shell completions: brokerctl --generate-completion-script bash|zsh|fish
            """,
        version: "brokerctl \(brokerdVersion)",
        subcommands: [
            Status.self, List.self, Declare.self, Delete.self, Bind.self, Unbind.self, Purge.self,
            Publish.self, Get.self, Peek.self, Move.self, Users.self, Watch.self, CloseCommand.self, Definitions.self, ContractCommand.self,
        ])

    /// Parses with the connection flags moved after the subcommand, so `brokerctl --port 5681 status` works as
    /// rabbitmqctl and kubectl users type it (swift-argument-parser reads a subcommand's options only after its name).
    static func main() async {
        await main(ConnectionOptions.hoisted(Array(CommandLine.arguments.dropFirst())))
    }
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

    @Flag(help: "Connect over TLS (env BROKERCTL_TLS=1); implied by --tls-ca.")
    var tls = ProcessInfo.processInfo.environment["BROKERCTL_TLS"] == "1"

    @Option(name: .customLong("tls-ca"), help: "PEM certificate authorities to trust for the broker's certificate (default: the system's).")
    var tlsCA: String?

    @Option(name: .customLong("tls-server-name"), help: "Name the broker's certificate must carry (default: --host).")
    var tlsServerName: String?

    @Option(name: .customLong("tls-cert"), help: "PEM client certificate, for a broker that requires one (with --tls-key).")
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: "PEM private key of --tls-cert.")
    var tlsKey: String?

    /// Connection flags that take a value, and those that do not.
    static let valued: Set<String> = ["--host", "--port", "--user", "--password", "--tls-ca", "--tls-server-name", "--tls-cert", "--tls-key"]
    static let flags: Set<String> = ["--tls"]

    /// `arguments` with the connection flags found before the subcommand moved to its end (before a `--`, if any).
    /// Anything else before the subcommand (`--help`, `--version`, an unknown flag) stays where it is.
    static func hoisted(_ arguments: [String]) -> [String] {
        var moved: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            if flags.contains(argument) || (valued.contains(name) && argument.contains("=")) {
                moved.append(argument)
                index += 1
            } else if valued.contains(argument) && index + 1 < arguments.count {
                moved += [argument, arguments[index + 1]]
                index += 2
            } else {
                break
            }
        }
        guard !moved.isEmpty else { return arguments }
        var rest = Array(arguments[index...])
        if let separator = rest.firstIndex(of: "--") {
            rest.insert(contentsOf: moved, at: separator)
        } else {
            rest += moved
        }
        return rest
    }

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535, got \(port)") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        for (flag, path) in [("--tls-ca", tlsCA), ("--tls-cert", tlsCert), ("--tls-key", tlsKey)] {
            if let path, !FileManager.default.isReadableFile(atPath: path) { throw ValidationError("\(flag) \(path): no such readable file") }
        }
    }

    /// TLS as the flags ask for it, or nil for plain TCP.
    var tlsConfiguration: ClientTLS? {
        guard tls || tlsCA != nil || tlsCert != nil else { return nil }
        return ClientTLS(caFile: tlsCA, serverName: tlsServerName, certificateFile: tlsCert, keyFile: tlsKey)
    }

    var address: String { "\(host):\(port)" }

    /// Connects, runs `body`, closes; every failure becomes a message on stderr and its exit code.
    func run<T>(_ body: (BrokerConnection) async throws -> T) async throws -> T {
        var configuration = ClientConfiguration(host: host, port: port, user: user, password: password, clientName: "brokerctl",
                                                connectTimeout: .seconds(5), requestTimeout: .seconds(10),
                                                recovery: nil)  // a one-shot command reports a dropped connection, it does not wait
        configuration.tls = tlsConfiguration
        // brokerctl reports every failure itself, in one line; the library's own log lines (connect failures
        // with NIO's details) only with BROKERCTL_DEBUG=1.
        if ProcessInfo.processInfo.environment["BROKERCTL_DEBUG"] != "1" {
            configuration.logger = Logger(label: "brokerctl", factory: { _ in SwiftLogNoOpLogHandler() })
        }
        do {
            return try await BrokerConnection.withConnection(configuration, body)
        } catch let error as BrokerError {
            throw Failure(error: error, address: address).exit()
        } catch let error as Failure {
            throw error.exit()
        }
    }
}

/// A failure brokerctl reports on stderr with its exit code.
struct Failure: Error, CustomStringConvertible {
    var error: BrokerError
    var address: String

    var description: String {
        switch error.code {
        case .accessRefused: "brokerctl: access refused by \(address): \(error.message)"
        case .connectionForced:
            "brokerctl: brokerd at \(address) closed the connection: \(error.message)"
        case .connectionClosed, .timeout, .heartbeatTimeout:
            error.message.lowercased().contains("connection refused")
                ? "brokerctl: cannot reach brokerd at \(address): connection refused. Is it running, and on this port?"
                : "brokerctl: cannot reach brokerd at \(address): \(error.message)"
        case .notFound, .invalidArgument, .preconditionFailed, .resourceLocked, .resourceError, .noRoute, .unknownFrame:
            "brokerctl: \(error.message) (code \(error.code.rawValue))"
        default: "brokerctl: \(error.description)"
        }
    }

    var exitCode: Int32 {
        switch error.code {
        case .accessRefused: 77  // EX_NOPERM
        case .connectionClosed, .connectionForced, .timeout, .heartbeatTimeout: 69  // EX_UNAVAILABLE: gone, or going
        case .notFound, .invalidArgument, .preconditionFailed, .resourceLocked, .resourceError, .noRoute, .unknownFrame: 65  // EX_DATAERR
        default: 70  // EX_SOFTWARE
        }
    }

    /// Prints the message and returns the exit to throw.
    func exit() -> ExitCode {
        FileHandle.standardError.write(Data((description + "\n").utf8))
        return ExitCode(exitCode)
    }
}

/// Options of commands that print data.
struct OutputOptions: ParsableArguments {
    @Option(help: "Output format: an aligned table, or JSON (an array of objects with snake_case keys).")
    var format: OutputFormat = .table

    @Option(help: ArgumentHelp("Columns to show, comma-separated (all of them with --format json unless given).", valueName: "names"))
    var columns: String?

    var columnList: [String]? {
        columns.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// Reads an input file (`-`: standard input); a file that cannot be read exits 66 (EX_NOINPUT) saying why.
func readInput(_ file: String) throws -> Data {
    do {
        return file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : try Data(contentsOf: URL(fileURLWithPath: file))
    } catch {
        FileHandle.standardError.write(Data("brokerctl: cannot read \(file): \(error.localizedDescription)\n".utf8))
        throw ExitCode(66)  // EX_NOINPUT
    }
}

/// `value` as brokerctl writes JSON documents: pretty, keys sorted (two exports of the same state are the same
/// bytes), slashes as they are, and a final newline.
func documentJSON(_ value: some Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(value) + Data("\n".utf8)
}

/// Writes `data` to `file` (atomically), or to stdout when there is none. A file that cannot be written exits 73
/// (EX_CANTCREAT) with the reason.
func writeOutput(_ data: Data, to file: String?) throws {
    guard let file else {
        FileHandle.standardOutput.write(data)
        return
    }
    do {
        try data.write(to: URL(fileURLWithPath: file), options: .atomic)
    } catch {
        FileHandle.standardError.write(Data("brokerctl: cannot write \(file): \(error.localizedDescription)\n".utf8))
        throw ExitCode(73)  // EX_CANTCREAT
    }
}

/// Parses `key=value` arguments into a table: integers and true/false become typed values, the rest strings.
func parseTable(_ pairs: [String], option: String) throws -> FieldTable {
    var table: FieldTable = [:]
    for pair in pairs {
        guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
            throw ValidationError("\(option) takes key=value, got '\(pair)'")
        }
        let key = String(pair[..<eq])
        let value = String(pair[pair.index(after: eq)...])
        if let int = Int64(value) {
            table[key] = .int(int)
        } else if value == "true" || value == "false" {
            table[key] = .bool(value == "true")
        } else {
            table[key] = .string(value)
        }
    }
    return table
}

/// Runs a check of the wire rules (names, keys) as a usage check: its failure exits 64 with its message.
func usage(_ check: () throws -> Void) throws {
    do {
        try check()
    } catch let error as BrokerError {
        throw ValidationError(error.message)
    }
}
