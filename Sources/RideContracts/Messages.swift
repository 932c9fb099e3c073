public import Foundation
/// `ContractVersion` (major.minor) is brokerd's own (WireProtocol), the one its contracts use.
public import WireProtocol

/// A point on the map, in degrees (WGS 84).
public struct GeoPoint: Codable, Sendable, Hashable {
    public var lat: Double
    public var lon: Double
    public init(lat: Double, lon: Double) {
        self.lat = lat
        self.lon = lon
    }

    /// Great-circle distance in kilometres (haversine, mean Earth radius).
    public func distanceKm(to other: GeoPoint) -> Double {
        let radians = Double.pi / 180
        let dLat = (other.lat - lat) * radians
        let dLon = (other.lon - lon) * radians
        let a = sin(dLat / 2) * sin(dLat / 2) + cos(lat * radians) * cos(other.lat * radians) * sin(dLon / 2) * sin(dLon / 2)
        return 6371.0088 * 2 * atan2(a.squareRoot(), (1 - a).squareRoot())
    }

    /// Whether both coordinates are finite and in range.
    public var isValid: Bool { lat.isFinite && lon.isFinite && (-90...90).contains(lat) && (-180...180).contains(lon) }
}

/// A message type's version (``ContractVersion``): the major number changes when old consumers could not read it,
/// the minor when a field is added that old consumers may ignore. The major travels in the message's `typeVersion`
/// property, the minor in `typeMinorVersion`, the whole version also in its `version` header (for AMQP-era tools).
/// A message the ride services exchange: its type name and version are declared once, here.
public protocol RideMessage: Codable, Sendable {
    /// The `type` property of every message of this kind (`trip.requested`).
    static var type: String { get }
    static var version: ContractVersion { get }
}

/// `trip.requested` 1.0: the trip service accepted a trip (published from its outbox). Routing key: the type.
public struct TripRequested: RideMessage, Hashable {
    public static let type = "trip.requested"
    public static let version = ContractVersion(1, 0)
    public var tripId: String
    public var passengerId: String
    public var passengerName: String
    public var pickup: GeoPoint
    public var destination: GeoPoint
    /// When the passenger asked, milliseconds since 1970 (for request-to-notification latency).
    public var requestedAtMs: Int64
    public init(tripId: String, passengerId: String, passengerName: String, pickup: GeoPoint, destination: GeoPoint, requestedAtMs: Int64) {
        self.tripId = tripId
        self.passengerId = passengerId
        self.passengerName = passengerName
        self.pickup = pickup
        self.destination = destination
        self.requestedAtMs = requestedAtMs
    }
}

/// `trip.requested` 2.0: the same trip with a new required field, the fare class the passenger booked. A 2.0
/// consumer reads 1.0 messages too (``init(upgrading:)``: a 1.0 trip is a standard fare); a 1.0 consumer cannot
/// read 2.0 ones, which is why the major changed (docs/contracts.md, "Rolling out a new major").
public struct TripRequestedV2: RideMessage, Hashable {
    public static let type = TripRequested.type
    public static let version = ContractVersion(2, 0)
    public enum FareClass: String, Codable, Sendable, CaseIterable {
        case standard, comfort, xl
    }
    public var tripId: String
    public var passengerId: String
    public var passengerName: String
    public var pickup: GeoPoint
    public var destination: GeoPoint
    public var requestedAtMs: Int64
    public var fareClass: FareClass
    public init(tripId: String, passengerId: String, passengerName: String, pickup: GeoPoint, destination: GeoPoint,
                requestedAtMs: Int64, fareClass: FareClass) {
        self.tripId = tripId
        self.passengerId = passengerId
        self.passengerName = passengerName
        self.pickup = pickup
        self.destination = destination
        self.requestedAtMs = requestedAtMs
        self.fareClass = fareClass
    }

    /// A 1.0 trip as 2.0: 1.0 had one fare class, standard.
    public init(upgrading v1: TripRequested) {
        self.init(tripId: v1.tripId, passengerId: v1.passengerId, passengerName: v1.passengerName, pickup: v1.pickup,
                  destination: v1.destination, requestedAtMs: v1.requestedAtMs, fareClass: .standard)
    }

    /// The trip as 1.0 (what a trip service still configured for 1.0 publishes).
    public var v1: TripRequested {
        TripRequested(tripId: tripId, passengerId: passengerId, passengerName: passengerName, pickup: pickup, destination: destination,
                      requestedAtMs: requestedAtMs)
    }
}

/// `trip.dispatched` 1.0, on the dispatch fanout: a driver was assigned. Trip, passenger and driver services each
/// get a copy.
public struct TripDispatched: RideMessage, Hashable {
    public static let type = "trip.dispatched"
    public static let version = ContractVersion(1, 0)
    public var tripId: String
    public var passengerId: String
    public var driverId: String
    public var driverName: String
    public var pickup: GeoPoint
    public var destination: GeoPoint
    public var distanceKm: Double
    public var requestedAtMs: Int64
    public var attempts: Int
    public init(tripId: String, passengerId: String, driverId: String, driverName: String, pickup: GeoPoint,
                destination: GeoPoint, distanceKm: Double, requestedAtMs: Int64, attempts: Int) {
        self.tripId = tripId
        self.passengerId = passengerId
        self.driverId = driverId
        self.driverName = driverName
        self.pickup = pickup
        self.destination = destination
        self.distanceKm = distanceKm
        self.requestedAtMs = requestedAtMs
        self.attempts = attempts
    }
}

/// `trip.no_driver` 1.0, on the dispatch fanout: no driver was found after every retry.
public struct TripNoDriver: RideMessage, Hashable {
    public static let type = "trip.no_driver"
    public static let version = ContractVersion(1, 0)
    public var tripId: String
    public var passengerId: String
    public var attempts: Int
    public var requestedAtMs: Int64
    public init(tripId: String, passengerId: String, attempts: Int, requestedAtMs: Int64) {
        self.tripId = tripId
        self.passengerId = passengerId
        self.attempts = attempts
        self.requestedAtMs = requestedAtMs
    }
}

/// `driver.nearby` 1.0: the dispatcher's RPC request to the driver service (reply-to, correlation id).
public struct DriverNearbyRequest: RideMessage, Hashable {
    public static let type = "driver.nearby"
    public static let version = ContractVersion(1, 0)
    public var pickup: GeoPoint
    public var radiusKm: Double
    public var limit: Int
    public init(pickup: GeoPoint, radiusKm: Double, limit: Int) {
        self.pickup = pickup
        self.radiusKm = radiusKm
        self.limit = limit
    }
}

/// `driver.nearby.reply` 1.0: available drivers within the radius, nearest first.
public struct DriverNearbyReply: RideMessage, Hashable {
    public static let type = "driver.nearby.reply"
    public static let version = ContractVersion(1, 0)
    public struct Candidate: Codable, Sendable, Hashable {
        public var driverId: String
        public var name: String
        public var location: GeoPoint
        public var distanceKm: Double
        public init(driverId: String, name: String, location: GeoPoint, distanceKm: Double) {
            self.driverId = driverId
            self.name = name
            self.location = location
            self.distanceKm = distanceKm
        }
    }
    public var drivers: [Candidate]
    public init(drivers: [Candidate]) { self.drivers = drivers }
}

/// `notification.requested` 1.0: a service asks the notification service to tell a passenger or a driver
/// something. `notificationId` is the idempotency key: the same notification is stored and streamed once.
public struct NotificationRequested: RideMessage, Hashable {
    public static let type = "notification.requested"
    public static let version = ContractVersion(1, 0)
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case driverAssigned = "driver_assigned"
        case tripOffer = "trip_offer"
        case noDriver = "no_driver"
    }
    public var notificationId: String
    public var recipientId: String
    public var kind: Kind
    public var title: String
    public var body: String
    public var tripId: String?
    /// When the passenger asked for the trip this is about (ms since 1970), for end-to-end latency.
    public var requestedAtMs: Int64?
    public init(notificationId: String, recipientId: String, kind: Kind, title: String, body: String, tripId: String?,
                requestedAtMs: Int64?) {
        self.notificationId = notificationId
        self.recipientId = recipientId
        self.kind = kind
        self.title = title
        self.body = body
        self.tripId = tripId
        self.requestedAtMs = requestedAtMs
    }
}
