import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

extension Brokerctl {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show version, uptime, listeners, connections, queues, messages, memory, disk, alarms and fsync policy.")

        @OptionGroup var connection: ConnectionOptions

        @Option(help: "Output format.")
        var format: OutputFormat = .table

        func run() async throws {
            let status = try await connection.run { try await $0.status() }
            print(render(status))
        }

        func render(_ status: FieldTable) -> String {
            switch format {
            case .json:
                return Renderer.json(Renderer.jsonObject(.table(status)))
            case .table:
                // One "key  value" line per field, sizes in readable units next to the raw figures.
                var rows: [FieldTable] = []
                for key in status.keys.sorted() {
                    guard let value = status[key] else { continue }
                    var shown = Renderer.text(value)
                    if case .int(let n) = value, key.hasSuffix("_limit") || key == "memory_used" || key == "disk_free" {
                        shown += " (\(Self.bytes(n)))"
                    }
                    if case .int(let ms) = value, key == "uptime_ms" { shown += " (\(Self.duration(ms)))" }
                    if case .array(let a) = value, a.isEmpty, key == "alarms" { shown = "none" }
                    rows.append(["field": .string(key), "value": .string(shown)])
                }
                return Renderer.table(rows, columns: ["field", "value"]).split(separator: "\n").dropFirst().joined(separator: "\n")
            }
        }

        static func bytes(_ n: Int64) -> String {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"]
            var value = Double(n)
            var unit = 0
            while value >= 1024 && unit < units.count - 1 {
                value /= 1024
                unit += 1
            }
            return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
        }

        static func duration(_ ms: Int64) -> String {
            let s = ms / 1000
            return s >= 3600 ? "\(s / 3600)h \(s % 3600 / 60)m" : s >= 60 ? "\(s / 60)m \(s % 60)s" : "\(s)s"
        }
    }
}
