// PlatformDevices: network interfaces and block devices that a platform
// discovers by itself rather than on PCI (the Xen frontends, found through
// xenbus), registered once at start and consulted by Rumprun before it
// probes PCI. Class-bound protocols, so one list can hold drivers of any
// type in Embedded Swift (which has no existentials of value types), and so
// an image that registers nothing links none of the drivers. Embedded-clean.

/// A network interface a platform registered: `NetworkInterface`'s
/// operations on a shared object (the driver locks itself), plus how it
/// signals the thread that polls it.
public protocol PlatformNetworkInterface: AnyObject {
    /// The launcher's name for the driver (`-I tag,xen-netfront,...`).
    var driverName: StaticString { get }
    var macAddress: MACAddress { get }
    var mtu: Int { get }
    var isLinkUp: Bool { get }
    var statistics: NetworkInterfaceStatistics { get }

    func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError)
    func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int
    func beginTransmitBatch()
    func endTransmitBatch()

    /// Arranges for `wake` to be called (possibly from an interrupt
    /// handler: it must only wake threads) when frames arrive or transmit
    /// slots come back. Returns how ("event channel"), or nil when the
    /// caller must poll.
    func connectWakeup(_ wake: @escaping () -> Void) -> StaticString?
    func disconnectWakeup()
    /// Stops the interface: the device no longer touches guest memory.
    func shutdown()
}

/// A block device a platform registered: `BlockDevice`'s operations on a
/// shared object, plus how it signals a thread waiting for completions.
public protocol PlatformBlockDevice: AnyObject {
    /// The launcher's name for the driver (`xen-blkfront` for `-b` on Xen).
    var driverName: StaticString { get }
    var sectorSize: Int { get }
    var sectorCount: UInt64 { get }
    var isReadOnly: Bool { get }

    func submit(_ request: BlockRequest) throws(BlockDeviceError)
    func pollCompletions(_ body: (BlockCompletion) -> Void) -> Int

    /// As `PlatformNetworkInterface.connectWakeup`, for completions.
    func connectWakeup(_ wake: @escaping () -> Void) -> StaticString?
    func disconnectWakeup()
    /// Detaches the device: outstanding requests fail, nothing more is done.
    func shutdown()
}

/// The registry. Platforms register before the application starts; users
/// look devices up by driver name and unit (the n-th device of that driver,
/// in the launcher's order) and take each at most once.
public enum PlatformDevices {
    public struct NetworkEntry {
        public var unit: Int
        public var device: any PlatformNetworkInterface
    }

    public struct BlockEntry {
        public var unit: Int
        public var device: any PlatformBlockDevice
    }

    nonisolated(unsafe) public private(set) static var networkInterfaces: [NetworkEntry] = []
    nonisolated(unsafe) public private(set) static var blockDevices: [BlockEntry] = []
    /// Devices the platform found but could not attach, one line each
    /// ("vif/1: backend never reached Connected"), for users' error reports.
    nonisolated(unsafe) public private(set) static var problems: [String] = []

    public static func register(network device: any PlatformNetworkInterface, unit: Int) {
        networkInterfaces.append(NetworkEntry(unit: unit, device: device))
    }

    public static func register(block device: any PlatformBlockDevice, unit: Int) {
        blockDevices.append(BlockEntry(unit: unit, device: device))
    }

    public static func report(problem: String) { problems.append(problem) }

    /// Whether any registered network interface answers to `driver`.
    public static func hasNetworkDriver(_ driver: String) -> Bool {
        networkInterfaces.contains { matches($0.device.driverName, driver) }
    }

    /// Whether any registered block device answers to `driver`.
    public static func hasBlockDriver(_ driver: String) -> Bool {
        blockDevices.contains { matches($0.device.driverName, driver) }
    }

    /// The network interface of `driver` with `unit`, if registered.
    public static func networkInterface(driver: String, unit: Int) -> (any PlatformNetworkInterface)? {
        networkInterfaces.first { $0.unit == unit && matches($0.device.driverName, driver) }?.device
    }

    /// The block device of `driver` with `unit`, if registered.
    public static func blockDevice(driver: String, unit: Int) -> (any PlatformBlockDevice)? {
        blockDevices.first { $0.unit == unit && matches($0.device.driverName, driver) }?.device
    }

    /// Empties the registry (tests; a platform tearing its devices down).
    public static func removeAll() {
        networkInterfaces.removeAll()
        blockDevices.removeAll()
        problems.removeAll()
    }

    /// Compares a driver's static name with a launcher string byte by byte
    /// (String equality would pull in Unicode tables in Embedded Swift).
    public static func matches(_ name: StaticString, _ driver: String) -> Bool {
        driver.utf8.elementsEqual(UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
    }
}
