// NetworkDevice: the NICs an application's network runs on (virtio-net and
// e1000 on PCI, or an interface the platform registered itself, such as
// Xen's netfront) behind one NetworkInterface type, with their interrupts
// connected so that a received frame wakes the network thread.
#if hasFeature(Embedded)
import BareMetalKit
import DeviceInterfaces

public typealias VirtioNetworkDevice = VirtioNetwork<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>
public typealias E1000NetworkDevice = E1000<MMIORegisters, HeapDMAMemory>

/// Whichever driver the machine needs, behind one type (NetworkStack takes
/// one interface type and Embedded Swift has no existentials). `Network`
/// uses it; an application that runs its own poll loop over NetStack
/// (Examples/httpd) takes one from `probe(driver:)`.
public enum NetworkDevice: NetworkInterface {
    case virtio(VirtioNetworkDevice)
    case e1000(E1000NetworkDevice)
    /// An interface the platform found without PCI (`PlatformDevices`).
    case platform(any PlatformNetworkInterface)
    /// Only while a mutating call has the driver out of the enum, so the
    /// driver's buffers stay uniquely referenced (no copy-on-write copies).
    case detached

    public var macAddress: MACAddress {
        switch self {
        case .virtio(let nic): return nic.macAddress
        case .e1000(let nic): return nic.macAddress
        case .platform(let nic): return nic.macAddress
        case .detached: return MACAddress(0, 0, 0, 0, 0, 0)
        }
    }

    public var mtu: Int {
        switch self {
        case .virtio(let nic): return nic.mtu
        case .e1000(let nic): return nic.mtu
        case .platform(let nic): return nic.mtu
        case .detached: return 1500
        }
    }

    public var isLinkUp: Bool {
        switch self {
        case .virtio(let nic): return nic.isLinkUp
        case .e1000(let nic): return nic.isLinkUp
        case .platform(let nic): return nic.isLinkUp
        case .detached: return false
        }
    }

    public var statistics: NetworkInterfaceStatistics {
        switch self {
        case .virtio(let nic): return nic.statistics
        case .e1000(let nic): return nic.statistics
        case .platform(let nic): return nic.statistics
        case .detached: return NetworkInterfaceStatistics()
        }
    }

    public mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        switch self {
        case .virtio(var nic):
            self = .detached
            defer { self = .virtio(nic) }
            try nic.send(frame: frame)
        case .e1000(var nic):
            self = .detached
            defer { self = .e1000(nic) }
            try nic.send(frame: frame)
        case .platform(let nic):
            try nic.send(frame: frame)
        case .detached:
            throw .linkDown
        }
    }

    public mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        switch self {
        case .virtio(var nic):
            self = .detached
            defer { self = .virtio(nic) }
            return try nic.receive(limit: limit, body)
        case .e1000(var nic):
            self = .detached
            defer { self = .e1000(nic) }
            return try nic.receive(limit: limit, body)
        case .platform(let nic):
            return try nic.receive(limit: limit, body)
        case .detached:
            throw .linkDown
        }
    }

    public mutating func beginTransmitBatch() {
        switch self {
        case .virtio(var nic):
            self = .detached
            nic.beginTransmitBatch()
            self = .virtio(nic)
        case .e1000(var nic):
            self = .detached
            nic.beginTransmitBatch()
            self = .e1000(nic)
        case .platform(let nic): nic.beginTransmitBatch()
        case .detached: break
        }
    }

    public mutating func endTransmitBatch() {
        switch self {
        case .virtio(var nic):
            self = .detached
            nic.endTransmitBatch()
            self = .virtio(nic)
        case .e1000(var nic):
            self = .detached
            nic.endTransmitBatch()
            self = .e1000(nic)
        case .platform(let nic): nic.endTransmitBatch()
        case .detached: break
        }
    }

    /// Stops the device's DMA.
    public func shutdown() {
        switch self {
        case .virtio(let nic): try? nic.shutdown()
        case .e1000(let nic): nic.shutdown()
        case .platform(let nic): nic.shutdown()
        case .detached: break
        }
    }

    /// "virtio-net", "e1000" or the platform's ("xen-netfront"), as
    /// rumprun-cli names the drivers.
    public var driverName: StaticString {
        switch self {
        case .virtio: return "virtio-net"
        case .e1000: return "e1000"
        case .platform(let nic): return nic.driverName
        case .detached: return "none"
        }
    }

    /// Starts the driver of the first NIC on PCI whose driver is `driver`
    /// ("virtio-net", "e1000"), or of the first supported NIC when nil, in
    /// polled mode (the caller's loop calls `receive`). Nil when there is
    /// none or its driver fails to start.
    public static func probe(driver: String?) -> NetworkDevice? {
        // Interfaces the platform registered (Xen's netfront) come first.
        for entry in PlatformDevices.networkInterfaces {
            if let driver, !PlatformDevices.matches(entry.device.driverName, driver) { continue }
            return .platform(entry.device)
        }
        for (function, name) in NetworkDeviceProbe.functions() {
            if let driver, !driver.utf8.elementsEqual(UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)) { continue }
            if let started = try? NetworkDeviceProbe.start(function, driver: name, tag: "", interrupts: false) { return started.device }
        }
        return nil
    }

    /// The NIC of the launcher's first interface (`-I`), else the first
    /// one PCI finds; polled.
    public static func probeConfigured() -> NetworkDevice? {
        probe(driver: Rumprun.networkInterfaces.first?.driver)
    }
}

/// A NIC found on PCI and started, with how its interrupts were connected.
struct StartedNetworkDevice {
    var device: NetworkDevice
    /// "MSI-X", "MSI or INTx", "INTx"; nil when polled.
    var interruptMode: StaticString?
    var detach: (() -> Void)?
}

/// The thread that runs the stack; interrupt handlers wake it by its id
/// (a value: nothing is retained or allocated in the handler).
enum NetworkThreadWakeup {
    nonisolated(unsafe) static var thread: ThreadID? = nil
    nonisolated(unsafe) static var interrupts: UInt64 = 0

    static func wake() {
        interrupts &+= 1
        if let thread { _ = ThreadRuntime.wake(thread) }
    }
}

enum NetworkDeviceProbe {
    static var access: PortConfigurationAccess<PortRegisters> { PortConfigurationAccess(ports: PortRegisters(base: 0xCF8)) }

    /// "virtio-net" or "e1000" for a PCI function these drivers handle.
    static func driverName(of function: PCIFunctionInfo) -> StaticString? {
        if function.vendorID == E1000NetworkDevice.vendorID && function.deviceID == E1000NetworkDevice.deviceID { return "e1000" }
        if VirtioPCI.deviceType(of: function) == VirtioPCI.networkType { return "virtio-net" }
        return nil
    }

    /// The NIC functions on the PCI bus, in enumeration order (which is the
    /// order rumprun-cli adds `-I` devices to QEMU's command line).
    static func functions() -> [(function: PCIFunctionInfo, driver: StaticString)] {
        var found: [(function: PCIFunctionInfo, driver: StaticString)] = []
        for function in PCIEnumerator.enumerate(access) {
            if let driver = driverName(of: function) { found.append((function, driver)) }
        }
        return found
    }

    /// Starts the driver of `function` and connects its interrupts (falls
    /// back to polling when they cannot be connected).
    static func start(_ function: PCIFunctionInfo, driver: StaticString, tag: String, interrupts: Bool) throws(NetworkError) -> StartedNetworkDevice {
        let access = self.access
        if driver.utf8CodeUnitCount == 5 {
            let nic: E1000NetworkDevice
            do throws(E1000Error) {
                nic = try E1000NetworkDevice(function: function.address, access: access, mapper: IdentityMappedIO(), dma: HeapDMAMemory())
            } catch {
                throw .driverFailed(tag: tag, driver: "e1000", code: 0)
            }
            guard interrupts else { return StartedNetworkDevice(device: .e1000(nic), interruptMode: nil, detach: nil) }
            do throws(InterruptError) {
                let registration = try nic.attachInterrupts(function: function.address, access: access) { _ in NetworkThreadWakeup.wake() }
                return StartedNetworkDevice(device: .e1000(nic), interruptMode: registration.line == nil ? "MSI" : "INTx", detach: { nic.detachInterrupts(registration) })
            } catch {
                return StartedNetworkDevice(device: .e1000(nic), interruptMode: nil, detach: nil)
            }
        }
        let transport: VirtioPCIModernTransport<MMIORegisters>
        let nic: VirtioNetworkDevice
        do throws(VirtioError) {
            transport = try VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO())
            nic = try VirtioNetworkDevice(transport: transport, dma: HeapDMAMemory())
        } catch {
            throw .driverFailed(tag: tag, driver: "virtio-net", code: error.code)
        }
        guard interrupts else {
            nic.setPolled(true)
            return StartedNetworkDevice(device: .virtio(nic), interruptMode: nil, detach: nil)
        }
        do throws(InterruptError) {
            let binding = try transport.attachInterrupts(access: access, queueCount: 2) { _ in NetworkThreadWakeup.wake() }
            nic.setPolled(false)
            return StartedNetworkDevice(
                device: .virtio(nic), interruptMode: binding.kind == .msix ? "MSI-X" : "INTx", detach: { binding.detach(access: access) })
        } catch {
            nic.setPolled(true)
            return StartedNetworkDevice(device: .virtio(nic), interruptMode: nil, detach: nil)
        }
    }
}
#endif
