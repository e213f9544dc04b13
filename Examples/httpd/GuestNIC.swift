// GuestNIC: one NetworkInterface over the BareMetalKit NIC drivers QEMU's pc
// machine offers (virtio-net, e1000), chosen from the launcher's JSON
// configuration (-I tag,driver,...) or, without one, from what PCI finds.
// Shared by Examples/httpd, Examples/udp-echo and Tests/Guests/frames
// (the latter two hold a symbolic link to this file).
import BareMetalKit
import DeviceInterfaces
import Rumprun

typealias VirtioNIC = VirtioNetwork<VirtioPCIModernTransport<MMIORegisters>, HeapDMAMemory>
typealias IntelNIC = E1000<MMIORegisters, HeapDMAMemory>

/// A polled NIC: whichever driver the machine needs, behind one type
/// (Embedded Swift has no existentials, and NetworkStack takes one type).
enum GuestNIC: NetworkInterface {
    case virtio(VirtioNIC)
    case e1000(IntelNIC)
    /// Only while a mutating call has the driver out of the enum: leaving
    /// the enum holding a second reference to the driver's arrays would make
    /// every send and receive copy them (copy-on-write).
    case detached

    /// "virtio-net" or "e1000", as rumprun-cli names the drivers.
    var driverName: StaticString {
        switch self {
        case .virtio: return "virtio-net"
        case .e1000: return "e1000"
        case .detached: return "none"
        }
    }

    var macAddress: MACAddress {
        switch self {
        case .virtio(let nic): return nic.macAddress
        case .e1000(let nic): return nic.macAddress
        case .detached: return MACAddress(0, 0, 0, 0, 0, 0)
        }
    }

    var mtu: Int {
        switch self {
        case .virtio(let nic): return nic.mtu
        case .e1000(let nic): return nic.mtu
        case .detached: return 1500
        }
    }

    var isLinkUp: Bool {
        switch self {
        case .virtio(let nic): return nic.isLinkUp
        case .e1000(let nic): return nic.isLinkUp
        case .detached: return false
        }
    }

    var statistics: NetworkInterfaceStatistics {
        switch self {
        case .virtio(let nic): return nic.statistics
        case .e1000(let nic): return nic.statistics
        case .detached: return NetworkInterfaceStatistics()
        }
    }

    mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        switch self {
        case .virtio(var nic):
            self = .detached
            defer { self = .virtio(nic) }
            try nic.send(frame: frame)
        case .e1000(var nic):
            self = .detached
            defer { self = .e1000(nic) }
            try nic.send(frame: frame)
        case .detached:
            throw .linkDown
        }
    }

    mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        switch self {
        case .virtio(var nic):
            self = .detached
            defer { self = .virtio(nic) }
            return try nic.receive(limit: limit, body)
        case .e1000(var nic):
            self = .detached
            defer { self = .e1000(nic) }
            return try nic.receive(limit: limit, body)
        case .detached:
            throw .linkDown
        }
    }

    mutating func beginTransmitBatch() {
        switch self {
        case .virtio(var nic):
            self = .detached
            nic.beginTransmitBatch()
            self = .virtio(nic)
        case .e1000(var nic):
            self = .detached
            nic.beginTransmitBatch()
            self = .e1000(nic)
        case .detached: break
        }
    }

    mutating func endTransmitBatch() {
        switch self {
        case .virtio(var nic):
            self = .detached
            nic.endTransmitBatch()
            self = .virtio(nic)
        case .e1000(var nic):
            self = .detached
            nic.endTransmitBatch()
            self = .e1000(nic)
        case .detached: break
        }
    }

    /// Stops the device's DMA (before the guest exits or drops the driver).
    func shutdown() {
        switch self {
        case .virtio(let nic): try? nic.shutdown()
        case .e1000(let nic): nic.shutdown()
        case .detached: break
        }
    }

    /// Starts the driver for the first NIC on the PCI bus whose driver
    /// matches `driver` ("virtio-net", "e1000"), or the first supported NIC
    /// when `driver` is nil. Nil when there is none or it fails to start.
    static func probe(driver: String?) -> GuestNIC? {
        let wantVirtio = driver.map { $0.utf8.elementsEqual("virtio-net".utf8) } ?? true
        let wantE1000 = driver.map { $0.utf8.elementsEqual("e1000".utf8) } ?? true
        let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
        for function in PCIEnumerator.enumerate(access) {
            if wantE1000 && function.vendorID == IntelNIC.vendorID && function.deviceID == IntelNIC.deviceID {
                if let nic = try? IntelNIC(function: function.address, access: access, mapper: IdentityMappedIO(), dma: HeapDMAMemory()) {
                    return .e1000(nic)
                }
            } else if wantVirtio && VirtioPCI.deviceType(of: function) == VirtioPCI.networkType {
                guard let transport = try? VirtioPCIModernTransport(function: function.address, access: access, mapper: IdentityMappedIO())
                else { continue }
                if let nic = try? VirtioNIC(transport: transport, dma: HeapDMAMemory()) { return .virtio(nic) }
            }
        }
        return nil
    }

    /// The NIC named by the launcher's first interface (-I), else the
    /// first one PCI finds.
    static func probeConfigured() -> GuestNIC? {
        probe(driver: Rumprun.networkInterfaces.first?.driver)
    }
}
