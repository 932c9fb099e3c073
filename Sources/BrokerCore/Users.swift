import Crypto
import _CryptoExtras
public import WireProtocol

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

/// A broker user.
public struct User: Hashable, Sendable, Codable {
    public var name: String
    public var password: PasswordHash
    /// May use management methods (status, and brokerctl's others).
    public var isAdmin: Bool
    /// May connect only from a loopback address (the default `guest` user).
    public var loopbackOnly: Bool

    /// The default user, created at every start rather than stored.
    public var isBuiltIn: Bool { name == UserStore.defaultUserName && loopbackOnly }

    public init(name: String, password: PasswordHash, isAdmin: Bool, loopbackOnly: Bool = false) {
        self.name = name
        self.password = password
        self.isAdmin = isAdmin
        self.loopbackOnly = loopbackOnly
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

