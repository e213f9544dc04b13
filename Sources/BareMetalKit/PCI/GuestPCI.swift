// GuestPCI: the guest's PCI bring-up: find the configuration mechanism
// (0xCF8/0xCFC, else ECAM from ACPI MCFG, else QEMU microvm's GPEX ECAM,
// recognised by its host bridge's IDs), enumerate, and on a machine
// without firmware (microvm,pcie=on) number the bridges' buses and assign
// the BARs and bridge windows.
#if hasFeature(Embedded)
import CPUPrimitives

/// Configuration access through whichever mechanism the machine has.
public struct PlatformConfigurationAccess: PCIConfigurationAccess {
    public enum Mechanism: Equatable {
        /// Ports 0xCF8/0xCFC (PC-compatible machines).
        case ports
        /// ECAM at `base` for buses `startBus...endBus`.
        case ecam(base: UInt64, startBus: UInt8, endBus: UInt8)
    }

    public let mechanism: Mechanism

    public init(mechanism: Mechanism) { self.mechanism = mechanism }

    @inline(__always) var ports: PortConfigurationAccess<PortRegisters> { PortConfigurationAccess(ports: PortRegisters(base: 0xCF8)) }

    @inline(__always) func ecam(_ base: UInt64, _ start: UInt8, _ end: UInt8) -> ECAMConfigurationAccess<MMIORegisters> {
        ECAMConfigurationAccess(window: MMIORegisters(base: UInt(base)), startBus: start, endBus: end)
    }

    public func read8(_ function: PCIAddress, offset: Int) -> UInt8 {
        switch mechanism {
        case .ports: ports.read8(function, offset: offset)
        case .ecam(let base, let start, let end): ecam(base, start, end).read8(function, offset: offset)
        }
    }
    public func read16(_ function: PCIAddress, offset: Int) -> UInt16 {
        switch mechanism {
        case .ports: ports.read16(function, offset: offset)
        case .ecam(let base, let start, let end): ecam(base, start, end).read16(function, offset: offset)
        }
    }
    public func read32(_ function: PCIAddress, offset: Int) -> UInt32 {
        switch mechanism {
        case .ports: ports.read32(function, offset: offset)
        case .ecam(let base, let start, let end): ecam(base, start, end).read32(function, offset: offset)
        }
    }
    public func write8(_ function: PCIAddress, offset: Int, _ value: UInt8) {
        switch mechanism {
        case .ports: ports.write8(function, offset: offset, value)
        case .ecam(let base, let start, let end): ecam(base, start, end).write8(function, offset: offset, value)
        }
    }
    public func write16(_ function: PCIAddress, offset: Int, _ value: UInt16) {
        switch mechanism {
        case .ports: ports.write16(function, offset: offset, value)
        case .ecam(let base, let start, let end): ecam(base, start, end).write16(function, offset: offset, value)
        }
    }
    public func write32(_ function: PCIAddress, offset: Int, _ value: UInt32) {
        switch mechanism {
        case .ports: ports.write32(function, offset: offset, value)
        case .ecam(let base, let start, let end): ecam(base, start, end).write32(function, offset: offset, value)
        }
    }
}

/// Physical memory the live page tables map (reads of anything else are
/// refused instead of faulting): for firmware tables after boot.
struct MappedPhysicalMemory: PhysicalMemoryReader {
    func loadByte(at address: UInt64) -> UInt8? {
        guard address >= 0x1000, address < 0x1_0000_0000 else { return nil }
        if let tables = Platform.pageTables, tables.translate(VirtualAddress(address)) == nil { return nil }
        return cpu_load8(UInt(address))
    }
}

/// The guest's PCI: configuration access, functions, BAR assignments.
public enum PlatformPCI {
    nonisolated(unsafe) static var accessStorage: PlatformConfigurationAccess? = nil
    nonisolated(unsafe) static var functionStorage: [PCIFunctionInfo] = []
    nonisolated(unsafe) public private(set) static var assignments: [PCIBARAssignment] = []
    nonisolated(unsafe) public private(set) static var resources: PCIHostBridgeResources? = nil
    /// The error of the last BAR assignment, if it failed.
    nonisolated(unsafe) public private(set) static var assignmentError: PCIAssignmentError? = nil

    /// The configuration mechanism (found on first use).
    public static var access: PlatformConfigurationAccess {
        initialize()
        return accessStorage!
    }

    /// Every function found (enumerated on first use).
    public static var functions: [PCIFunctionInfo] {
        initialize()
        return functionStorage
    }

    /// Finds the mechanism, enumerates, and assigns BARs when no firmware
    /// did (the windows are known only for QEMU microvm's GPEX bridge).
    /// Idempotent.
    public static func initialize() {
        guard accessStorage == nil else { return }
        let ports = PlatformConfigurationAccess(mechanism: .ports)
        var access = ports
        if PCIFunctionInfo.read(PCIAddress(bus: 0, device: 0, function: 0), access: ports) == nil {
            if let region = mcfgRegion() {
                access = PlatformConfigurationAccess(mechanism: .ecam(base: region.baseAddress, startBus: region.startBus, endBus: region.endBus))
            }
            // QEMU 7.2's microvm lists no MCFG; its GPEX ECAM is at a fixed
            // address, used only when the host bridge's IDs are there.
            let microvm = PCIHostBridgeResources.qemuMicrovm(physicalAddressBits: physicalAddressBits())
            if let region = microvm.ecam {
                let candidate = PlatformConfigurationAccess(mechanism: .ecam(base: region.baseAddress, startBus: region.startBus, endBus: region.endBus))
                if let host = PCIFunctionInfo.read(PCIAddress(bus: 0, device: 0, function: 0), access: candidate),
                    host.vendorID == PCIHostBridgeResources.gpexVendorID, host.deviceID == PCIHostBridgeResources.gpexDeviceID
                {
                    access = candidate
                    resources = microvm
                }
            }
        }
        accessStorage = access
        // Without firmware nobody numbered the buses behind bridges.
        if resources != nil { PCIBusNumbering.assign(access) }
        functionStorage = PCIEnumerator.enumerate(access)
        if let resources {
            do throws(PCIAssignmentError) {
                assignments = try PCIResourceAssigner.assign(functionStorage, resources: resources, access: access)
            } catch {
                assignmentError = error
            }
        }
    }

    /// CPUID 0x80000008 EAX[7:0]: physical address bits (36 when absent).
    static func physicalAddressBits() -> Int {
        var registers: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &registers) { cpu_cpuid(0x8000_0000, 0, $0.baseAddress!.assumingMemoryBound(to: UInt32.self)) }
        guard registers.0 >= 0x8000_0008 else { return 36 }
        withUnsafeMutableBytes(of: &registers) { cpu_cpuid(0x8000_0008, 0, $0.baseAddress!.assumingMemoryBound(to: UInt32.self)) }
        return Int(registers.0 & 0xFF)
    }

    /// The MCFG allocation for segment 0, if the firmware tables have one.
    static func mcfgRegion() -> PCIConfigurationRegion? {
        let memory = MappedPhysicalMemory()
        guard let rsdp = Platform.boot?.rsdpAddress ?? ACPITables.findRSDP(memory: memory) else { return nil }
        do throws(FirmwareTableError) {
            let tables = try ACPITables(memory: memory, rsdpAddress: rsdp)
            return try tables.pciConfigurationRegions()?.first { $0.segmentGroup == 0 }
        } catch {
            return nil
        }
    }
}
#endif
