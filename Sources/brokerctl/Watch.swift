import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

extension Brokerctl {
    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A live view of queue depths and rates, refreshed until interrupted (Ctrl-C).",
            discussion: "On a terminal the screen is redrawn in place; otherwise each refresh is printed after the previous one.")

        @Option(help: "Seconds between refreshes.") var interval = 2.0
        @Option(help: "Stop after this many refreshes (default: run until interrupted).") var count: Int?
        @Option(help: ArgumentHelp("Queue columns, comma-separated.", valueName: "names")) var columns: String?
        @OptionGroup var connection: ConnectionOptions

        var columnList: [String] {
            columns.map { $0.split(separator: ",").map(String.init) }
                ?? ["name", "messages_ready", "messages_unacked", "consumers", "messages_paged", "publish_rate", "deliver_rate", "state"]
        }

        func validate() throws {
            guard interval >= 0.1 && interval <= 3600 else { throw ValidationError("--interval must be from 0.1 to 3600 seconds") }
            if let count, count < 1 { throw ValidationError("--count must be at least 1") }
            let available = List.Kind.queues.defaults + List.Kind.queues.extra
            let unknown = columnList.filter { !available.contains($0) }
            guard unknown.isEmpty else { throw ValidationError("unknown columns \(unknown.joined(separator: ", ")); available: \(available.joined(separator: ", "))") }
        }

        func run() async throws {
            let terminal = isatty(STDOUT_FILENO) == 1
            try await connection.run { client in
                var refreshes = 0
                while count.map({ refreshes < $0 }) ?? true {
                    let status = try await client.status()
                    let queues = try await client.list("queues")
                    var screen = terminal ? "\u{1B}[H\u{1B}[2J" : ""
                    screen += Self.summary(status, address: connection.address) + "\n\n"
                    screen += Renderer.table(queues, columns: columnList)
                    print(screen)
                    fflush(nil)  // a pipe gets each refresh as it is made
                    refreshes += 1
                    if count.map({ refreshes >= $0 }) ?? false { break }
                    try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                }
            }
        }

        static func summary(_ status: FieldTable, address: String) -> String {
            func int(_ key: String) -> Int64 { status[key]?.intValue ?? 0 }
            var line = "brokerd \(status["version"]?.stringValue ?? "?") at \(address) | \(Date().formatted(date: .omitted, time: .standard))"
            line += " | connections \(int("connections")) | queues \(int("queues"))"
            line += " | ready \(int("messages_ready")) unacked \(int("messages_unacked")) paged \(int("messages_paged"))"
            line += " | memory \(Status.bytes(int("memory_used"))) of \(Status.bytes(int("memory_limit")))"
            if case .array(let alarms)? = status["alarms"], !alarms.isEmpty {
                line += " | ALARM: " + alarms.compactMap(\.stringValue).joined(separator: "; ")
            }
            return line
        }
    }
}
