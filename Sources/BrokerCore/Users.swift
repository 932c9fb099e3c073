import Crypto
import _CryptoExtras
public import WireProtocol

/// Printing a hash (a configuration dump at debug level, `dump`, string interpolation) never shows its salt or
/// bytes: they are what an attacker needs for an offline guess.
extension PasswordHash: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String { "PasswordHash(PBKDF2-SHA256, \(rounds) rounds, redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}

/// A salted PBKDF2-HMAC-SHA256 password hash. The clear password is never stored.
public struct PasswordHash: Hashable, Sendable, Codable {
    public var rounds: Int
    public var salt: [UInt8]
    public var hash: [UInt8]

    /// Rounds for new hashes. Verification runs on a thread pool, never on an event loop.
    public static let defaultRounds = 20_000

    public init(rounds: Int, salt: [UInt8], hash: [UInt8]) {
        self.rounds = rounds
        self.salt = salt
        self.hash = hash
    }

    /// Hashes `password` with a fresh random 16-byte salt.
    public init(password: String, rounds: Int = PasswordHash.defaultRounds) {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        self.init(rounds: rounds, salt: salt, hash: Self.derive(password, salt: salt, rounds: rounds))
    }

    static func derive(_ password: String, salt: [UInt8], rounds: Int) -> [UInt8] {
        // PBKDF2 fails only for invalid parameters (rounds < 1, empty output); ours are constants.
        let key = try? KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32, unsafeUncheckedRounds: max(rounds, 1))
        return key?.withUnsafeBytes { Array($0) } ?? []
    }

    /// Compares in constant time.
    public func verify(_ password: String) -> Bool {
        let candidate = Self.derive(password, salt: salt, rounds: rounds)
        guard candidate.count == hash.count, !hash.isEmpty else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(candidate, hash) { difference |= a ^ b }
        return difference == 0
    }
}

/// What a user may do with exchanges and queues, as RabbitMQ's permissions: three regular expressions over
/// names (docs/protocol.md §11, "Permissions"). A name is allowed when the whole name matches; the empty pattern
/// allows nothing. The default exchange is named `amq.default` here.
///
/// - configure: declare and delete (exchanges and queues);
/// - write: publish to an exchange; bind a queue (write on the queue, read on the exchange); purge a queue;
/// - read: consume from and get from a queue, move messages out of it; the exchange side of a binding.
public struct Permissions: Hashable, Sendable, Codable {
    public var configure: String
    public var write: String
    public var read: String

    /// Everything: what a user without explicit permissions may do (as before permissions existed).
    public static let all = Permissions(configure: ".*", write: ".*", read: ".*")

    public init(configure: String, write: String, read: String) {
        self.configure = configure
        self.write = write
        self.read = read
    }

    /// The kinds of access, for checks and error texts.
    public enum Access: String, Sendable {
        case configure, write, read
    }

    /// Checks that each pattern is a valid regular expression; throws 502 naming the bad one.
    public func validate() throws(BrokerError) {
        for (access, pattern) in [(Access.configure, configure), (.write, write), (.read, read)] {
            do {
                _ = try Regex(pattern)
            } catch {
                throw BrokerError(.invalidArgument, "\(access.rawValue) permission '\(pattern)' is not a valid regular expression: \(error)")
            }
        }
    }

    func pattern(_ access: Access) -> String {
        switch access {
        case .configure: configure
        case .write: write
        case .read: read
        }
    }
}

/// A user's permissions compiled once (per connection), with the names already decided remembered, so a publish
/// pays a dictionary lookup at most, never a regular expression. Owned by its session, on the broker's loop.
final class PermissionChecker {
    private let permissions: Permissions?
    /// The user the permissions are of, named in refusals.
    private let user: String
    private var compiled: [Permissions.Access: Regex<AnyRegexOutput>] = [:]
    private var decided: [Permissions.Access: [String: Bool]] = [:]
    /// Bound on remembered decisions per kind of access (a client inventing names cannot grow it without end).
    private static let memoryLimit = 4096

    init(_ user: User) {
        self.permissions = user.permissions
        self.user = user.name
        guard let permissions else { return }
        for access in [Permissions.Access.configure, .write, .read] {
            // Validated when set; an invalid stored pattern (edited by hand) compiles to nothing and denies.
            compiled[access] = try? Regex(permissions.pattern(access))
        }
    }

    /// Whether `access` on the object named `name` is allowed.
    func allows(_ access: Permissions.Access, _ name: String) -> Bool {
        guard let permissions else { return true }
        if let known = decided[access]?[name] { return known }
        let pattern = permissions.pattern(access)
        let subject = name.isEmpty ? "amq.default" : name
        let allowed = !pattern.isEmpty && (compiled[access].map { (try? $0.wholeMatch(in: subject)) != nil } ?? false)
        if decided[access, default: [:]].count >= Self.memoryLimit { decided[access] = [:] }
        decided[access, default: [:]][name] = allowed
        return allowed
    }

    /// The 403 naming the user, the access and the object, or nil when it is allowed.
    func refusal(_ access: Permissions.Access, _ kind: String, _ name: String) -> BrokerError? {
        guard !allows(access, name) else { return nil }
        let shown = name.isEmpty ? "the default exchange" : "\(kind) '\(name)'"
        return BrokerError(.accessRefused, "user '\(user)' has no \(access.rawValue) permission on \(shown)")
    }

    /// Throws ``refusal(_:_:_:)`` unless allowed.
    func check(_ access: Permissions.Access, _ kind: String, _ name: String) throws(BrokerError) {
        if let refusal = refusal(access, kind, name) { throw refusal }
    }
}

/// A broker user.
public struct User: Hashable, Sendable, Codable {
    public var name: String
    public var password: PasswordHash
    /// May use management methods (status, and brokerctl's others).
    public var isAdmin: Bool
    /// May connect only from a loopback address (the default `guest` user).
    public var loopbackOnly: Bool
    /// What it may configure, write and read; nil is everything (users made before permissions existed, and new
    /// users until an operator restricts them).
    public var permissions: Permissions?
    /// Most queues, bindings and consumers it may hold at once; nil is no limit.
    public var limits: UserLimits?

    /// The default user, created at every start rather than stored.
    public var isBuiltIn: Bool { name == UserStore.defaultUserName && loopbackOnly }

    public init(name: String, password: PasswordHash, isAdmin: Bool, loopbackOnly: Bool = false) {
        self.name = name
        self.password = password
        self.isAdmin = isAdmin
        self.loopbackOnly = loopbackOnly
    }
}

/// Per-user limits, as RabbitMQ's user limits: most objects a user's connections may hold at once. A limit
/// reached is 506 naming it.
public struct UserLimits: Hashable, Sendable, Codable {
    /// Queues declared by this user that exist now.
    public var maxQueues: Int?
    /// Bindings this user made that exist now.
    public var maxBindings: Int?
    /// Consumers of this user's connections.
    public var maxConsumers: Int?

    public init(maxQueues: Int? = nil, maxBindings: Int? = nil, maxConsumers: Int? = nil) {
        self.maxQueues = maxQueues
        self.maxBindings = maxBindings
        self.maxConsumers = maxConsumers
    }
}

/// The users a broker accepts. Like RabbitMQ's `guest`, the default user `guest`/`guest` is an administrator that
/// may connect only from loopback.
public struct UserStore: Sendable {
    public private(set) var users: [String: User] = [:]

    public static let defaultUserName = "guest"

    public init(includeDefaultUser: Bool = true) {
        if includeDefaultUser {
            let guest = User(name: Self.defaultUserName, password: PasswordHash(password: "guest"), isAdmin: true, loopbackOnly: true)
            users[guest.name] = guest
        }
    }

    public func user(named name: String) -> User? { users[name] }

    public mutating func add(_ user: User) { users[user.name] = user }

    @discardableResult
    public mutating func remove(named name: String) -> User? { users.removeValue(forKey: name) }

    /// Checks credentials. Slow on purpose (PBKDF2): call it off the event loop.
    public static func authenticate(_ user: User?, password: String, fromLoopback: Bool) -> Result<User, BrokerError> {
        // Hash even for an unknown user, so timing does not reveal which names exist.
        guard let user else {
            _ = PasswordHash(rounds: PasswordHash.defaultRounds, salt: [0], hash: [0]).verify(password)
            return .failure(BrokerError(.accessRefused, "login refused: unknown user or wrong password"))
        }
        guard user.password.verify(password) else {
            return .failure(BrokerError(.accessRefused, "login refused: unknown user or wrong password"))
        }
        if user.loopbackOnly && !fromLoopback {
            return .failure(BrokerError(.accessRefused, "user '\(user.name)' may connect only from localhost; create another user for remote access"))
        }
        return .success(user)
    }
}

