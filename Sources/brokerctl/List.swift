import ArgumentParser
import BrokerClient
import WireProtocol

/// Typed rows as the tables brokerctl renders (keys are the rows' coding keys).
func encodeRows<Row: Encodable>(_ rows: [Row]) throws -> [FieldTable] {
    try rows.map { try FieldTableEncoder().encode($0) }
}

extension Brokerctl {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List queues, exchanges, bindings, connections or consumers.",
            discussion: Kind.allCases.map(\.columnHelp).joined(separator: "\n\n")
                + "\n\nRates are messages per second over the broker's last one-second sample.")

        enum Kind: String, ExpressibleByArgument, CaseIterable {
            case queues, exchanges, bindings, connections, consumers

            var defaults: [String] {
                switch self {
                case .queues:
                    ["name", "messages_ready", "messages_unacked", "consumers", "messages_in_memory", "messages_paged", "memory_bytes",
                     "publish_rate", "deliver_rate", "state"]
                case .exchanges: ["name", "type", "durable", "auto_delete", "bindings"]
                case .bindings: ["source", "destination", "routing_key"]
                case .connections: ["id", "name", "peer", "user", "protocol", "consumers", "messages_unacked", "state"]
                case .consumers: ["queue", "consumer_tag", "connection", "ack_required", "prefetch", "messages_unacked"]
                }
            }

            /// The columns of this listing for --help, wrapped to fit 80 columns (argument-parser does not indent
            /// the lines it wraps itself).
            var columnHelp: String {
                var lines = ["\(rawValue) columns (the defaults | the others):"]
                var line = " "
                for (i, column) in (defaults + extra).enumerated() {
                    let word = " " + column + (i == defaults.count - 1 && !extra.isEmpty ? " |" : (i < defaults.count + extra.count - 1 ? "," : ""))
                    if line.count + word.count > 76 {
                        lines.append(line)
                        line = " "
                    }
                    line += word
                }
                lines.append(line)
                return lines.joined(separator: "\n")
            }

            /// The Swift type of this listing's rows: its coding keys are the columns there are.
            var rowType: any ManagementRow.Type {
                switch self {
                case .queues: QueueRow.self
                case .exchanges: ExchangeRow.self
                case .bindings: BindingRow.self
                case .connections: ConnectionRow.self
                case .consumers: ConsumerRow.self
                }
            }

            /// The columns shown only when asked for: every field of the row type not among the defaults.
            var extra: [String] { rowType.columns.filter { !defaults.contains($0) } }

            /// The rows, fetched as their Swift type and encoded back to tables, so that what brokerctl prints
            /// (table or JSON) is exactly what the typed API returns.
            func rows(_ connection: BrokerConnection) async throws -> [FieldTable] {
                switch self {
                case .queues: try encodeRows(try await connection.listQueues())
                case .exchanges: try encodeRows(try await connection.listExchanges())
                case .bindings: try encodeRows(try await connection.listBindings())
                case .connections: try encodeRows(try await connection.listConnections())
                case .consumers: try encodeRows(try await connection.listConsumers())
                }
            }
        }

        @Argument(help: "What to list.")
        var kind: Kind

        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            _ = try Renderer(format: output.format, requested: output.columnList)
                .columns(defaults: kind.defaults, available: kind.defaults + kind.extra)
        }

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let columns = try renderer.columns(defaults: kind.defaults, available: kind.defaults + kind.extra)
            let rows = try await connection.run { try await kind.rows($0) }
            print(renderer.render(rows, columns: columns))
        }
    }
}
