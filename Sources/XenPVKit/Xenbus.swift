// Xenbus: the frontend side of the device handshake over xenstore (Xen
// public/io/xenbus.h states; node layout as described in io/blkif.h and
// io/netif.h: "backend", "backend-id", "state" and feature keys).
import CXen

/// `enum xenbus_state` (C name `XenbusState`, which the CXen import also carries).
public enum XenbusDeviceState: UInt32, Sendable {
    case unknown = 0
    case initialising = 1
    case initWait = 2
    case initialised = 3
    case connected = 4
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// Parses a state node's decimal value.
    public init?<Bytes: Collection>(wire: Bytes) where Bytes.Element == UInt8 {
        guard let value = parseDecimal(wire), value <= 8 else { return nil }
        self.init(rawValue: UInt32(value))
    }

    /// The frontend moves forward through Initialising, InitWait,
    /// Initialised, Connected, Closing, Closed; it may close from any state
    /// and starts over from Closed.
    public func allowsFrontend(to next: XenbusDeviceState) -> Bool {
        switch (self, next) {
        case (.unknown, .initialising), (.closed, .initialising): return true
        case (.initialising, .initWait), (.initialising, .initialised), (.initWait, .initialised): return true
        case (.initialised, .connected), (.initialising, .connected), (.initWait, .connected): return true
        case (.closing, .closed): return true
        case (_, .closing), (_, .closed): return self != .closed
        default: return false
        }
    }
}

/// Why a xenbus handshake failed.
public enum XenbusError: Error, Sendable {
    case store(XenStoreError)
    /// The frontend state machine does not allow this step.
    case invalidTransition(from: XenbusDeviceState, to: XenbusDeviceState)
    /// The backend closed (or never existed) while we waited for `expected`.
    case backendGone(state: XenbusDeviceState, expected: XenbusDeviceState)
    /// A node the protocol requires holds something unparsable.
    case malformedNode(path: String)
    /// The backend lacks a feature this frontend cannot do without.
    case missingFeature(String)
    case eventChannel(EventChannelError)
    case grantTable(GrantTableError)
    /// No page for a ring or buffer.
    case outOfMemory
}

#if !hasFeature(Embedded)
// String equality needs the Unicode normalisation tables, which the guest
// does not link; comparing these errors is for host code and tests.
extension XenbusError: Equatable {}
#endif

/// One frontend device node, for instance `/local/domain/5/device/vbd/768`,
/// and the backend it pairs with.
public struct XenbusDevice: Sendable {
    public let nodePath: String
    public let backendPath: String
    public let backendDomain: DomainID
    public private(set) var state: XenbusDeviceState = .initialising
    /// Backend states seen while waiting, oldest first (diagnostics).
    public private(set) var backendStates: [XenbusDeviceState] = []

    /// Reads `backend` and `backend-id` under `nodePath`.
    public init<H>(nodePath: String, store: inout XenStore<H>) throws(XenbusError) {
        self.nodePath = nodePath
        let id: [UInt8]
        do {
            backendPath = try store.readString(nodePath + "/backend")
            id = try store.read(nodePath + "/backend-id")
        } catch { throw .store(error) }
        // Domain ids from DOMID_FIRST_RESERVED (0x7FF0) up are not domains.
        guard let domain = parseDecimal(id), domain < 0x7FF0 else { throw .malformedNode(path: nodePath + "/backend-id") }
        backendDomain = DomainID(domain)
    }

    /// Writes our `state` node after checking the transition.
    public mutating func switchState<H>(
        to next: XenbusDeviceState, store: inout XenStore<H>, in transaction: XenStoreTransaction = .none
    ) throws(XenbusError) {
        guard state.allowsFrontend(to: next) else { throw .invalidTransition(from: state, to: next) }
        do { try store.write(nodePath + "/state", Self.decimalString(UInt64(next.rawValue)), in: transaction) } catch {
            throw .store(error)
        }
        state = next
    }

    /// Records a state the caller wrote itself (inside a transaction).
    mutating func didPublish(_ next: XenbusDeviceState) {
        precondition(state.allowsFrontend(to: next), "invalid xenbus transition")
        state = next
    }

    /// The backend's `state` node (Unknown when missing).
    public mutating func backendState<H>(store: inout XenStore<H>) throws(XenbusError) -> XenbusDeviceState {
        let bytes: [UInt8]
        do { bytes = try store.read(backendPath + "/state") } catch {
            if case .store(.noEntry, _) = error { return .unknown }
            throw .store(error)
        }
        guard let state = XenbusDeviceState(wire: bytes) else { throw .malformedNode(path: backendPath + "/state") }
        return state
    }

    /// Watches the backend's state until `accept` says yes; fails if the
    /// backend closes first. The watch is removed before returning.
    public mutating func waitForBackend<H>(
        store: inout XenStore<H>, expecting expected: XenbusDeviceState, _ accept: (XenbusDeviceState) -> Bool
    ) throws(XenbusError) -> XenbusDeviceState {
        let token = nodePath
        do { try store.watch(backendPath + "/state", token: token) } catch { throw .store(error) }
        defer { try? store.unwatch(backendPath + "/state", token: token) }
        while true {
            let current = try backendState(store: &store)
            if backendStates.last != current { backendStates.append(current) }
            if accept(current) { return current }
            if current == .closing || current == .closed {
                throw .backendGone(state: current, expected: expected)
            }
            do { _ = try store.waitForWatchEvent(token: token) } catch { throw .store(error) }
        }
    }

    /// A backend node's value, nil when absent.
    public func backendValue<H>(_ key: String, store: inout XenStore<H>) throws(XenbusError) -> [UInt8]? {
        do { return try store.read(backendPath + "/" + key) } catch {
            if case .store(.noEntry, _) = error { return nil }
            throw .store(error)
        }
    }

    /// A backend node as an unsigned number, nil when absent.
    public func backendNumber<H>(_ key: String, store: inout XenStore<H>) throws(XenbusError) -> UInt64? {
        guard let bytes = try backendValue(key, store: &store) else { return nil }
        guard let value = parseDecimal(bytes) else { throw .malformedNode(path: backendPath + "/" + key) }
        return value
    }

    /// Whether the backend advertises `feature-...` = "1".
    public func backendFeature<H>(_ key: String, store: inout XenStore<H>) throws(XenbusError) -> Bool {
        try backendNumber(key, store: &store).map { $0 != 0 } ?? false
    }

    static func decimalString(_ value: UInt64) -> String {
        if value == 0 { return "0" }
        var digits: [UInt8] = []
        var rest = value
        while rest > 0 {
            digits.append(UInt8(ascii: "0") + UInt8(rest % 10))
            rest /= 10
        }
        return String(decoding: digits.reversed(), as: UTF8.self)
    }
}
