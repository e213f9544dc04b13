// XenDevices: the domain's paravirtual devices at run time. Discovery from
// the xenbus directories the toolstack creates for the xl vif and disk lines
// (`<home>/device/vif/<handle>`, `<home>/device/vbd/<virtual-device>`; Xen
// public/io/xenbus.h, io/netif.h, io/blkif.h, docs/misc/vbd-interface),
// one netfront or blkfront per entry through the xenbus handshake, backend
// state changes routed from xenstore watches to the frontends, requests
// given up on after a timeout, and the frontends offered to Rumprun through
// DeviceInterfaces' `PlatformDevices`. Generic over `Hypercalls` and
// `GuestMemory`, so host tests run it against the simulated hypervisor and
// the backend models.
import CXen
import DeviceInterfaces

/// Why a device the toolstack listed did not attach.
public enum XenDeviceError: Error, Sendable {
    /// `device/vif` or `device/vbd` exists but could not be listed.
    case listing(path: String, XenStoreError)
    /// The device node lacks a key the toolstack writes (`backend`, `backend-id`).
    case missingNode(device: String, key: String)
    /// The backend did not reach Connected within the bounded wait;
    /// `state` is its state node afterwards (Unknown when unreadable).
    case backendNotConnected(device: String, state: XenbusDeviceState)
    /// The backend went to Closing or Closed during the handshake.
    case backendClosed(device: String, state: XenbusDeviceState)
    /// Any other failure of the handshake (feature missing, bad node, no
    /// grant or page, store error).
    case handshake(device: String, XenbusError)

    /// The device this error is about ("vif/0", "vbd/51712"), or the path.
    public var device: String {
        switch self {
        case .listing(let path, _): return path
        case .missingNode(let device, _), .backendNotConnected(let device, _), .backendClosed(let device, _),
            .handshake(let device, _):
            return device
        }
    }

    /// One line for the console and for `PlatformDevices.problems`.
    public var description: String {
        switch self {
        case .listing(let path, _): return path + ": cannot list the devices"
        case .missingNode(let device, let key): return device + ": no '" + key + "' node (written by the toolstack)"
        case .backendNotConnected(let device, let state):
            return device + ": the backend never reached Connected (its state: " + state.name + ")"
        case .backendClosed(let device, let state): return device + ": the backend closed during the handshake (" + state.name + ")"
        case .handshake(let device, _): return device + ": the xenbus handshake failed"
        }
    }
}

#if !hasFeature(Embedded)
extension XenDeviceError: Equatable {}
#endif

extension XenbusDeviceState {
    /// The state's name in io/xenbus.h.
    public var name: String {
        switch self {
        case .unknown: return "Unknown"
        case .initialising: return "Initialising"
        case .initWait: return "InitWait"
        case .initialised: return "Initialised"
        case .connected: return "Connected"
        case .closing: return "Closing"
        case .closed: return "Closed"
        case .reconfiguring: return "Reconfiguring"
        case .reconfigured: return "Reconfigured"
        }
    }
}

/// Bounds and sizes of the run-time devices.
public struct XenDeviceLimits: Sendable {
    /// Waits for an event (`SCHEDOP_block`, in the guest a bounded sleep)
    /// allowed per step of a handshake before the backend counts as not
    /// connecting.
    public var handshakeWaits: Int
    /// Nanoseconds outstanding requests (or transmitted frames) may go
    /// without any completion before the frontend gives up on its backend.
    public var requestTimeout: UInt64
    public var receiveBuffers: Int
    public var transmitSlots: Int

    public init(handshakeWaits: Int = 1000, requestTimeout: UInt64 = 30_000_000_000, receiveBuffers: Int = 64, transmitSlots: Int = 64) {
        self.handshakeWaits = handshakeWaits
        self.requestTimeout = requestTimeout
        self.receiveBuffers = receiveBuffers
        self.transmitSlots = transmitSlots
    }
}

/// The frontends of one domain, their xenstore connection and event
/// channels. Lock order: a device's lock, then `storeLock`, then the
/// event table's lock.
public final class XenDevices<H: Hypercalls, Memory: GuestMemory> {
    /// The domain's xenstore home, `/local/domain/<domid>`.
    public let home: String
    var store: XenStore<H>
    let storeLock: any XenLock
    let grants: GrantTable
    let memory: Memory
    public let events: XenEvents<H>
    let makeLock: () -> any XenLock
    /// Monotonic nanoseconds (request timeouts).
    let clock: () -> UInt64
    public var limits: XenDeviceLimits

    public private(set) var networkInterfaces: [XenNetworkInterface<H, Memory>] = []
    public private(set) var blockDevices: [XenBlockDevice<H, Memory>] = []
    /// Devices listed by the toolstack that did not attach, in discovery order.
    public private(set) var failures: [XenDeviceError] = []
    /// Watch events handed to a frontend's `backendChanged`.
    public private(set) var routedWatchEvents = 0
    /// Times a frontend gave up on a silent backend (`abandonOutstanding`).
    public private(set) var abandonments = 0

    /// - Parameters:
    ///   - store: the connected xenstore client; its `maximumWaits` bounds
    ///     ordinary requests.
    ///   - makeLock: a new lock per device (a thread mutex in the guest).
    public init(
        home: String, store: XenStore<H>, storeLock: any XenLock, grants: GrantTable, memory: Memory, events: XenEvents<H>,
        limits: XenDeviceLimits = XenDeviceLimits(), makeLock: @escaping () -> any XenLock, clock: @escaping () -> UInt64
    ) {
        self.home = home
        self.store = store
        self.storeLock = storeLock
        self.grants = grants
        self.memory = memory
        self.events = events
        self.limits = limits
        self.makeLock = makeLock
        self.clock = clock
    }

    /// Runs `body` on the xenstore client under its lock.
    public func withStore<Result>(_ body: (inout XenStore<H>) -> Result) -> Result {
        locked(storeLock) { body(&store) }
    }

    // MARK: Discovery

    /// Connects a frontend for every entry of `device/vif` and `device/vbd`
    /// (in numeric order); an entry that fails is recorded in `failures`
    /// and the others still attach. Returns how many attached.
    @discardableResult
    public func discover() -> Int {
        locked(storeLock) {
            for id in listing("vif") { attachNetwork(id) }
            for id in listing("vbd") { attachBlock(id) }
        }
        // A handshake waiting for its backend takes every watch event, so a
        // change of an already attached backend may have gone by: look once.
        refreshAll()
        return networkInterfaces.count + blockDevices.count
    }

    /// The entries of `<home>/device/<kind>` in numeric order (none when absent).
    func listing(_ kind: String) -> [String] {
        let path = home + "/device/" + kind
        let names: [String]
        do { names = try store.directory(path) } catch {
            if case .store(.noEntry, _) = error { return [] }
            failures.append(.listing(path: path, error))
            return []
        }
        return names.sorted { (parseDecimal($0.utf8) ?? UInt64.max) < (parseDecimal($1.utf8) ?? UInt64.max) }
    }

    /// Whether the node has the keys the toolstack always writes; records
    /// the failure when not.
    func hasToolstackKeys(_ node: String, device: String) -> Bool {
        for key in ["backend", "backend-id"] {
            do { _ = try store.read(node + "/" + key) } catch {
                if case .store(.noEntry, _) = error {
                    failures.append(.missingNode(device: device, key: key))
                } else {
                    failures.append(.handshake(device: device, .store(error)))
                }
                return false
            }
        }
        return true
    }

    func classify(_ error: XenbusError, device: String, node: String) -> XenDeviceError {
        switch error {
        case .store(.noResponse):
            var state = XenbusDeviceState.unknown
            if let backend = try? store.readString(node + "/backend"), let bytes = try? store.read(backend + "/state"),
                let current = XenbusDeviceState(wire: bytes)
            {
                state = current
            }
            return .backendNotConnected(device: device, state: state)
        case .backendGone(let state, _):
            return .backendClosed(device: device, state: state)
        default:
            return .handshake(device: device, error)
        }
    }

    /// Tells the toolstack this frontend gave up (state Closed).
    func giveUp(_ node: String) {
        try? store.write(node + "/state", XenbusDevice.decimalString(UInt64(XenbusDeviceState.closed.rawValue)))
    }

    static func watchToken(_ node: String) -> String { "rumprun-backend:" + node }

    func attachNetwork(_ id: String) {
        guard
            let (front, device, token) = connectFrontend("vif", id, connect: { (node) throws(XenbusError) in
                try NetFront.connect(
                    nodePath: node, store: &store, memory: memory, grants: grants, receiveBuffers: limits.receiveBuffers,
                    transmitSlots: limits.transmitSlots)
            })
        else { return }
        let unit = parseDecimal(id.utf8).map { Int(truncatingIfNeeded: $0) } ?? networkInterfaces.count
        networkInterfaces.append(XenNetworkInterface(unit: unit, name: device, watchToken: token, front: front, devices: self))
    }

    func attachBlock(_ id: String) {
        guard
            let (front, device, token) = connectFrontend("vbd", id, connect: { (node) throws(XenbusError) in
                try BlockFront.connect(nodePath: node, store: &store, memory: memory, grants: grants)
            })
        else { return }
        var unit = blockDevices.count
        if let number = parseDecimal(id.utf8), let disk = Self.diskUnit(virtualDevice: number) { unit = disk }
        blockDevices.append(XenBlockDevice(unit: unit, name: device, watchToken: token, front: front, devices: self))
    }

    /// What attaching a vif or a vbd shares: the toolstack's keys, the
    /// handshake with a bounded wait, the watch on the backend's state.
    /// Nil, with the failure recorded and the frontend given up, when a step
    /// fails.
    func connectFrontend<Front: XenFrontend>(
        _ kind: String, _ id: String, connect: (String) throws(XenbusError) -> Front
    ) -> (front: Front, device: String, token: String)? {
        let device = kind + "/" + id
        let node = home + "/device/" + kind + "/" + id
        guard hasToolstackKeys(node, device: device) else { return nil }
        let saved = store.maximumWaits
        store.maximumWaits = limits.handshakeWaits
        defer { store.maximumWaits = saved }
        var front: Front
        do throws(XenbusError) {
            front = try connect(node)
        } catch {
            failures.append(classify(error, device: device, node: node))
            giveUp(node)
            return nil
        }
        let token = Self.watchToken(node)
        do { try store.watch(front.device.backendPath + "/state", token: token) } catch {
            failures.append(.handshake(device: device, .store(error)))
            front.abandonOutstanding()
            giveUp(node)
            return nil
        }
        return (front, device, token)
    }

    /// The disk's position among `xvda`, `xvdb`, ... from its
    /// `virtual-device` number (docs/misc/vbd-interface: major 202 with
    /// 16 minors per disk, or the extended form with bit 28 set); nil for
    /// other numberings.
    public static func diskUnit(virtualDevice id: UInt64) -> Int? {
        if id & (1 << 28) != 0 { return Int((id >> 8) & 0xF_FFFF) }
        if id >> 8 == 202 { return Int((id & 0xFF) >> 4) }
        return nil
    }

    // MARK: Watches and timeouts

    /// Takes the watch events queued on the xenstore connection and calls
    /// `backendChanged` of the frontend each belongs to. Returns how many
    /// reached a frontend (others, such as late events of a finished
    /// handshake, are dropped).
    @discardableResult
    public func routeWatchEvents() -> Int {
        var fired: [XenStoreWatchEvent] = []
        locked(storeLock) {
            while let event = try? store.nextWatchEvent() { fired.append(event) }
        }
        var routed = 0
        for event in fired {
            for nic in networkInterfaces where nic.watchToken.utf8.elementsEqual(event.token.utf8) {
                nic.watchEvents += 1
                nic.backendChanged()
                routed += 1
            }
            for disk in blockDevices where disk.watchToken.utf8.elementsEqual(event.token.utf8) {
                disk.watchEvents += 1
                disk.backendChanged()
                routed += 1
            }
        }
        routedWatchEvents += routed
        return routed
    }

    /// Reads every backend's state once (after something else may have
    /// consumed its watch events).
    public func refreshAll() {
        for nic in networkInterfaces { nic.backendChanged() }
        for disk in blockDevices { disk.backendChanged() }
    }

    /// Gives up on frontends whose outstanding work saw no completion for
    /// `limits.requestTimeout` nanoseconds: their requests fail, their
    /// grants are ended (pages the backend still maps stay quarantined).
    /// Returns how many frontends gave up.
    @discardableResult
    public func checkTimeouts(now: UInt64) -> Int {
        var count = 0
        for disk in blockDevices where disk.abandonIfStalled(now: now, limit: limits.requestTimeout) { count += 1 }
        for nic in networkInterfaces where nic.abandonIfStalled(now: now, limit: limits.requestTimeout) { count += 1 }
        abandonments += count
        return count
    }

    /// Offers every attached frontend to Rumprun (`PlatformDevices`), by
    /// vif handle and disk unit, and reports the failures there.
    public func registerWithPlatform() {
        for nic in networkInterfaces { PlatformDevices.register(network: nic, unit: nic.unit) }
        for disk in blockDevices { PlatformDevices.register(block: disk, unit: disk.unit) }
        for failure in failures { PlatformDevices.report(problem: failure.description) }
    }
}

/// What the device wrappers need of a frontend to follow its backend and
/// its event channel (NetFront, BlockFront).
public protocol XenFrontend {
    associatedtype H: Hypercalls
    var isConnected: Bool { get }
    var port: EventChannelPort { get }
    var device: XenbusDevice { get }
    /// Work the backend has not answered yet (frames, requests).
    var outstandingWork: Int { get }
    mutating func backendChanged(store: inout XenStore<H>) throws(XenbusError)
    mutating func disconnect(store: inout XenStore<H>) throws(XenbusError)
    mutating func abandonOutstanding()
}

extension NetFront: XenFrontend {
    public var outstandingWork: Int { outstandingTransmitCount }
}

extension BlockFront: XenFrontend {
    public var outstandingWork: Int { outstandingRequestCount }
}

/// The part of XenNetworkInterface and XenBlockDevice that is the same for
/// both: the frontend under its lock, the wake-up bound to its event
/// channel, backend state changes and the request timeout.
public class XenFrontendDevice<H: Hypercalls, Memory: GuestMemory, Front: XenFrontend> where Front.H == H {
    /// The device's unit: the n-th `-I` (vif) or `-b` (vbd) of the launcher.
    public let unit: Int
    /// "vif/0", "vbd/51712".
    public let name: String
    let watchToken: String
    /// Watch events of its backend's state routed to it.
    public internal(set) var watchEvents = 0
    var front: Front
    let lock: any XenLock
    let devices: XenDevices<H, Memory>
    var wake: (() -> Void)? = nil
    var boundPort: EventChannelPort? = nil
    /// When outstanding work began or was last answered.
    var lastProgress: UInt64 = 0

    init(unit: Int, name: String, watchToken: String, front: Front, devices: XenDevices<H, Memory>) {
        self.unit = unit
        self.name = name
        self.watchToken = watchToken
        self.front = front
        self.devices = devices
        lock = devices.makeLock()
    }

    /// The frontend's state (tests, diagnostics).
    public var isConnected: Bool { locked(lock) { front.isConnected } }
    public var port: EventChannelPort { front.port }
    public var backendPath: String { front.device.backendPath }

    public func connectWakeup(_ wake: @escaping () -> Void) -> StaticString? {
        locked(lock) { () -> StaticString? in
            guard front.isConnected else { return nil }
            do throws(EventChannelError) { try devices.events.bind(front.port) { _ in wake() } } catch { return nil }
            self.wake = wake
            boundPort = front.port
            return "event channel"
        }
    }

    public func disconnectWakeup() {
        locked(lock) { unbindLocked() }
    }

    func unbindLocked() {
        if let port = boundPort { devices.events.unbind(port) }
        boundPort = nil
    }

    /// Closes the device with its backend (Closing, backend Closing or
    /// Closed, Closed); outstanding work fails and every grant is ended.
    public func shutdown() {
        locked(lock) {
            unbindLocked()
            wake = nil
            locked(devices.storeLock) { _ = try? front.disconnect(store: &devices.store) }
        }
    }

    /// The backend's state node changed. When that disconnected the
    /// frontend, the waiter is woken: the network thread finds the link
    /// down, waiting disk threads collect their failed requests.
    func backendChanged() {
        let waker: (() -> Void)? = locked(lock) {
            let wasConnected = front.isConnected
            locked(devices.storeLock) { _ = try? front.backendChanged(store: &devices.store) }
            guard wasConnected && !front.isConnected else { return nil }
            unbindLocked()
            return wake
        }
        waker?()
    }

    /// Gives up on outstanding work the backend has not answered for
    /// `limit` nanoseconds; true when it did.
    func abandonIfStalled(now: UInt64, limit: UInt64) -> Bool {
        let waker: (() -> Void)?? = locked(lock) {
            guard front.isConnected, front.outstandingWork > 0, now >= lastProgress, now - lastProgress > limit else { return nil }
            front.abandonOutstanding()
            unbindLocked()
            return .some(wake)
        }
        guard let waker else { return false }
        waker?()
        return true
    }
}

/// A netfront as Rumprun sees it: `PlatformNetworkInterface` over
/// `NetFront`, locked per device, woken through its event channel.
public final class XenNetworkInterface<H: Hypercalls, Memory: GuestMemory>: XenFrontendDevice<H, Memory, NetFront<H, Memory>>,
    PlatformNetworkInterface
{
    var progressMark = 0

    override init(unit: Int, name: String, watchToken: String, front: NetFront<H, Memory>, devices: XenDevices<H, Memory>) {
        macAddress = front.macAddress
        mtu = front.mtu
        super.init(unit: unit, name: name, watchToken: watchToken, front: front, devices: devices)
    }

    public var driverName: StaticString { "xen-netfront" }
    /// Read once at connect (the `mac` and `mtu` nodes), so no lock is needed.
    public let macAddress: MACAddress
    public let mtu: Int
    public var isLinkUp: Bool { locked(lock) { front.isLinkUp } }
    public var statistics: NetworkInterfaceStatistics { locked(lock) { front.statistics } }
    public var outstandingTransmitCount: Int { locked(lock) { front.outstandingTransmitCount } }
    public var quarantinedPageCount: Int { locked(lock) { front.quarantinedPageCount } }

    var answered: Int { front.statistics.framesSent + front.statistics.transmitErrors }

    func noteProgress(hadOutstanding: Bool) {
        if !hadOutstanding && front.outstandingTransmitCount > 0 || answered != progressMark {
            lastProgress = devices.clock()
            progressMark = answered
        }
    }

    public func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        try locked(lock) { () throws(NetworkInterfaceError) in
            let hadOutstanding = front.outstandingTransmitCount > 0
            defer { noteProgress(hadOutstanding: hadOutstanding) }
            try front.send(frame: frame)
        }
    }

    public func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        try locked(lock) { () throws(NetworkInterfaceError) -> Int in
            let hadOutstanding = front.outstandingTransmitCount > 0
            defer { noteProgress(hadOutstanding: hadOutstanding) }
            return try front.receive(limit: limit, body)
        }
    }

    public func beginTransmitBatch() {}
    public func endTransmitBatch() {}
}

/// A blkfront as Rumprun sees it: `PlatformBlockDevice` over `BlockFront`,
/// locked per device, woken through its event channel.
public final class XenBlockDevice<H: Hypercalls, Memory: GuestMemory>: XenFrontendDevice<H, Memory, BlockFront<H, Memory>>,
    PlatformBlockDevice
{
    public var driverName: StaticString { "xen-blkfront" }
    public var sectorSize: Int { locked(lock) { front.sectorSize } }
    public var sectorCount: UInt64 { locked(lock) { front.sectorCount } }
    public var isReadOnly: Bool { locked(lock) { front.isReadOnly } }
    public var outstandingRequestCount: Int { locked(lock) { front.outstandingRequestCount } }
    public var quarantinedPageCount: Int { locked(lock) { front.quarantinedPageCount } }

    public func submit(_ request: BlockRequest) throws(BlockDeviceError) {
        try locked(lock) { () throws(BlockDeviceError) in
            let idle = front.outstandingRequestCount == 0
            try front.submit(request)
            if idle { lastProgress = devices.clock() }
        }
    }

    public func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int {
        locked(lock) {
            let count = front.pollCompletions(body)
            if count > 0 { lastProgress = devices.clock() }
            return count
        }
    }
}
