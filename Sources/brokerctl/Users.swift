import ArgumentParser
import BrokerClient
import Foundation
import WireProtocol

extension Brokerctl {
    struct Users: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage the broker's users.",
            discussion: """
                Users are administrators (every method, management included) or not (messaging only). What a \
                user may configure, write and read is set with set-permissions (regular expressions over \
                exchange and queue names, as RabbitMQ's), and how many queues, bindings and consumers it may \
                hold with set-limits. Changes are saved with the broker's metadata and apply to the user's open \
                connections at once. The built-in guest user works from loopback only; delete it once you have \
                an administrator of your own.
                """,
            subcommands: [ListUsers.self, Add.self, Remove.self, Passwd.self, SetPermissions.self, ClearPermissions.self, SetLimits.self])
    }
}

/// A new password, from an option or from the first line of standard input.
struct NewPassword: ParsableArguments {
    @Option(help: "The new password (visible to other local users in the process list; prefer --password-stdin).")
    var newPassword: String?

    @Flag(help: "Read the new password from the first line of standard input.")
    var passwordStdin = false

    func validate() throws {
        guard (newPassword != nil) != passwordStdin else { throw ValidationError("give exactly one of --new-password and --password-stdin") }
    }

    func read() throws -> String {
        if let newPassword { return newPassword }
        guard let line = readLine(strippingNewline: true), !line.isEmpty else { throw ValidationError("no password on standard input") }
        return line
    }
}

extension Brokerctl.Users {
    struct ListUsers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List users.")

        @OptionGroup var output: OutputOptions
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let renderer = Renderer(format: output.format, requested: output.columnList)
            let defaults = ["name", "admin", "loopback_only", "configure", "write", "read"]
            let columns = try renderer.columns(defaults: defaults, available: UserRow.columns)
            let rows = try await connection.run { try encodeRows(try await $0.listUsers()) }
            print(renderer.render(rows, columns: columns))
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user.")

        @Argument(help: "User name.") var name: String
        @OptionGroup var password: NewPassword
        @Flag(help: "Make the user an administrator.") var admin = false
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let secret = try password.read()
            try await connection.run { try await $0.addUser(name, password: secret, admin: admin) }
            print("user '\(name)' added\(admin ? " (administrator)" : "")")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a user (not the one you are connected as).")

        @Argument(help: "User name.") var name: String
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            try await connection.run { try await $0.deleteUser(name) }
            print("user '\(name)' deleted")
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a user's password.")

        @Argument(help: "User name.") var name: String
        @OptionGroup var password: NewPassword
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let secret = try password.read()
            try await connection.run { try await $0.changePassword(of: name, to: secret) }
            print("password of '\(name)' changed")
        }
    }
}
