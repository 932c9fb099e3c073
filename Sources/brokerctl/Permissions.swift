import ArgumentParser
import BrokerClient
import Foundation

extension Brokerctl.Users {
    struct SetPermissions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-permissions",
            abstract: "Restrict what a user may configure, write and read.",
            discussion: """
                Each permission is a regular expression that a whole exchange or queue name must match: \
                configure covers declare and delete, write covers publishing to an exchange and binding into a \
                queue, read covers consuming, getting and purging a queue and binding from an exchange. "" allows \
                nothing, ".*" everything; the default exchange is named amq.default. Example, a trip service that \
                owns its trip.* objects and publishes to the dispatch exchange:

                  brokerctl users set-permissions trip --configure '^trip\\..*' --write '^(trip\\..*|dispatch)$' --read '^trip\\..*'
                """)

        @Argument(help: "User name.") var name: String
        @Option(help: "Names the user may declare and delete.") var configure: String
        @Option(help: "Exchanges the user may publish to, queues it may bind into.") var write: String
        @Option(help: "Queues the user may consume from, get from and purge; exchanges it may bind from.") var read: String
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            for (flag, pattern) in [("--configure", configure), ("--write", write), ("--read", read)] {
                do {
                    _ = try Regex(pattern)
                } catch {
                    throw ValidationError("\(flag) '\(pattern)' is not a valid regular expression: \(error)")
                }
            }
        }

        func run() async throws {
            try await connection.run { try await $0.setPermissions(of: name, configure: configure, write: write, read: read) }
            print("permissions of '\(name)' set: configure '\(configure)', write '\(write)', read '\(read)'")
        }
    }

    struct ClearPermissions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "clear-permissions", abstract: "Give a user full access again (configure, write and read '.*').")

        @Argument(help: "User name.") var name: String
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            try await connection.run { try await $0.clearPermissions(of: name) }
            print("permissions of '\(name)' cleared: full access")
        }
    }

    struct SetLimits: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-limits",
            abstract: "Limit how many queues, bindings and consumers a user may hold at once (0 removes a limit).")

        @Argument(help: "User name.") var name: String
        @Option(help: "Most queues the user's connections may have declared (existing at once).") var maxQueues: Int = 0
        @Option(help: "Most bindings the user may have made.") var maxBindings: Int = 0
        @Option(help: "Most consumers across the user's connections.") var maxConsumers: Int = 0
        @OptionGroup var connection: ConnectionOptions

        func validate() throws {
            for (flag, value) in [("--max-queues", maxQueues), ("--max-bindings", maxBindings), ("--max-consumers", maxConsumers)]
            where !(0...1_000_000_000).contains(value) {
                throw ValidationError("\(flag) must be from 0 (no limit) to 1000000000, got \(value)")
            }
        }

        func run() async throws {
            try await connection.run {
                try await $0.setLimits(of: name, maxQueues: maxQueues, maxBindings: maxBindings, maxConsumers: maxConsumers)
            }
            func shown(_ value: Int) -> String { value == 0 ? "none" : "\(value)" }
            print("limits of '\(name)' set: queues \(shown(maxQueues)), bindings \(shown(maxBindings)), consumers \(shown(maxConsumers))")
        }
    }
}
