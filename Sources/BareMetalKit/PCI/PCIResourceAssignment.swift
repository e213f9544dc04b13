// PCIResourceAssignment: giving Base Address Registers addresses where no
// firmware did (QEMU `-M microvm,pcie=on` boots without BIOS), from the
// host bridge's windows; then enabling decoding and bus mastering. BAR
// semantics per PCI Local Bus 3.0 §6.2.5.1 (sizes are powers of two and
// addresses naturally aligned), command register §6.2.2.

/// An address range a host bridge forwards to PCI.
public struct PCIWindow: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public init(base: UInt64, size: UInt64) {
        self.base = base
        self.size = size
    }
    /// One past the last address.
    public var end: UInt64 { base &+ size }
}

/// Which of a host bridge's windows.
public enum PCIWindowKind: Equatable, Sendable {
    case memory32, memory64, io
}

/// The windows a host bridge forwards, and where its ECAM lies.
public struct PCIHostBridgeResources: Equatable, Sendable {
    /// Memory below 4 GiB.
    public var memory32: PCIWindow
    /// Memory above 4 GiB (64-bit BARs only), if the bridge has one.
    public var memory64: PCIWindow?
    /// I/O ports, if the bridge forwards any.
    public var io: PCIWindow?
    /// The ECAM region and its bus range.
    public var ecam: PCIConfigurationRegion?

    public init(memory32: PCIWindow, memory64: PCIWindow?, io: PCIWindow?, ecam: PCIConfigurationRegion?) {
        self.memory32 = memory32
        self.memory64 = memory64
        self.io = io
        self.ecam = ecam
    }

    /// QEMU's microvm with `pcie=on` (hw/i386/microvm.c, microvm.h): a
    /// GPEX host bridge (1b36:0008) with ECAM at 0xE000_0000 (256 MiB,
    /// buses 0-255), 32-bit MMIO at 0xC000_0000 (512 MiB), 64-bit MMIO in
    /// the top quarter of the physical address space (the CPU's physical
    /// address width, CPUID 0x80000008), and no I/O window.
    public static func qemuMicrovm(physicalAddressBits: Int) -> PCIHostBridgeResources {
        var memory64: PCIWindow? = nil
        if physicalAddressBits > 24 && physicalAddressBits < 64 {
            let space = UInt64(1) << UInt64(physicalAddressBits)
            memory64 = PCIWindow(base: space - space / 4, size: space / 4)
        }
        return PCIHostBridgeResources(
            memory32: PCIWindow(base: 0xC000_0000, size: 0x2000_0000), memory64: memory64, io: nil,
            ecam: PCIConfigurationRegion(baseAddress: 0xE000_0000, segmentGroup: 0, startBus: 0, endBus: 255))
    }

    /// QEMU's generic PCIe host bridge: vendor 0x1b36 (Red Hat), device 0x0008.
    public static var gpexVendorID: UInt16 { 0x1B36 }
    public static var gpexDeviceID: UInt16 { 0x0008 }
}

/// One BAR after assignment.
public struct PCIBARAssignment: Equatable, Sendable {
    public var function: PCIAddress
    public var index: Int
    /// The BAR as it decodes now.
    public var bar: PCIBAR
    /// Whether firmware had already assigned it (left as it was).
    public var byFirmware: Bool
    /// The window it was placed in (nil for firmware-assigned BARs).
    public var window: PCIWindowKind?

    public init(function: PCIAddress, index: Int, bar: PCIBAR, byFirmware: Bool, window: PCIWindowKind?) {
        self.function = function
        self.index = index
        self.bar = bar
        self.byFirmware = byFirmware
        self.window = window
    }
}

/// Why BAR assignment failed.
public enum PCIAssignmentError: Error, Equatable, Sendable {
    /// Reading or sizing a BAR failed.
    case pci(PCIError)
    /// No window has room for this BAR (`free` is the largest aligned
    /// block left in the last window tried).
    case windowExhausted(function: PCIAddress, index: Int, size: UInt64, window: PCIWindowKind)
    /// A BAR larger than any window could hold (or a size that is not a
    /// power of two, which no conforming device reports).
    case impossibleSize(function: PCIAddress, index: Int, size: UInt64)
}

/// A bump allocator over one window that steps over ranges already in use.
struct PCIWindowAllocator {
    let window: PCIWindow
    var cursor: UInt64
    var used: [(start: UInt64, end: UInt64)] = []

    init(window: PCIWindow) {
        self.window = window
        cursor = window.base
    }

    /// Marks a firmware-assigned range as taken.
    mutating func reserve(start: UInt64, size: UInt64) {
        used.append((start, start &+ size))
    }

    /// The next free block of `size` bytes aligned to `alignment`, or nil.
    mutating func allocate(size: UInt64, alignment: UInt64) -> UInt64? {
        var candidate = cursor
        while true {
            let (rounded, overflow) = candidate.addingReportingOverflow(alignment - 1)
            if overflow { return nil }
            candidate = rounded & ~(alignment - 1)
            let (end, overflowEnd) = candidate.addingReportingOverflow(size)
            if overflowEnd || end > window.end { return nil }
            if let clash = used.first(where: { $0.start < end && candidate < $0.end }) {
                candidate = clash.end
                continue
            }
            cursor = end
            return candidate
        }
    }
}

public enum PCIResourceAssigner {
    /// Memory BARs get at least a page, so every device's registers can be
    /// mapped (and protected) on their own.
    public static var minimumMemoryAlignment: UInt64 { 4096 }

    /// Sizes every BAR of the type 0 functions in `functions`, keeps the
    /// ones firmware assigned (their ranges are reserved), and places the
    /// rest, largest first, each naturally aligned: 32-bit memory BARs in
    /// the 32-bit window; 64-bit memory BARs there too while it has room
    /// (the boot identity map reaches only the first 4 GiB), else in the
    /// 64-bit window; I/O BARs in the I/O window, or left unassigned (I/O
    /// decoding stays off) when the bridge has none. Then enables memory
    /// decoding (I/O decoding when an I/O BAR was placed) and bus
    /// mastering on every function with a BAR. When a window is exhausted
    /// nothing has been written yet. Functions behind
    /// PCI-to-PCI bridges are not handled (microvm has none).
    public static func assign<Access: PCIConfigurationAccess>(
        _ functions: [PCIFunctionInfo], resources: PCIHostBridgeResources, access: Access
    ) throws(PCIAssignmentError) -> [PCIBARAssignment] {
        var memory32 = PCIWindowAllocator(window: resources.memory32)
        var memory64 = resources.memory64.map { PCIWindowAllocator(window: $0) }
        var io = resources.io.map { PCIWindowAllocator(window: $0) }

        var assignments: [PCIBARAssignment] = []
        var requests: [(function: PCIAddress, index: Int, bar: PCIBAR)] = []
        for function in functions where function.headerType == 0 {
            let bars: [PCIBAR?]
            do {
                bars = try PCIBAR.readAll(function.address, access: access)
            } catch {
                throw .pci(error)
            }
            for (index, bar) in bars.enumerated() {
                guard let bar else { continue }
                if bar.address != 0 {
                    assignments.append(PCIBARAssignment(function: function.address, index: index, bar: bar, byFirmware: true, window: nil))
                    if bar.isIO {
                        io?.reserve(start: bar.address, size: bar.size)
                    } else if bar.address >= 0x1_0000_0000 {
                        memory64?.reserve(start: bar.address, size: bar.size)
                    } else {
                        memory32.reserve(start: bar.address, size: bar.size)
                    }
                } else {
                    guard bar.size != 0, bar.size & (bar.size - 1) == 0 else {
                        throw .impossibleSize(function: function.address, index: index, size: bar.size)
                    }
                    requests.append((function.address, index, bar))
                }
            }
        }
        // Largest first: naturally aligned blocks then pack without holes.
        requests.sort { $0.bar.size > $1.bar.size || ($0.bar.size == $1.bar.size && ($0.function, $0.index) < ($1.function, $1.index)) }

        // Everything is placed before anything is written: a failure leaves
        // the configuration space as it was.
        var planned: [PCIBARAssignment] = []
        for request in requests {
            switch request.bar {
            case .io(_, let size):
                guard io != nil else { continue }
                guard let port = io!.allocate(size: UInt64(size), alignment: UInt64(size)) else {
                    throw .windowExhausted(function: request.function, index: request.index, size: UInt64(size), window: .io)
                }
                let placed = PCIBAR.io(port: UInt32(port), size: size)
                planned.append(PCIBARAssignment(function: request.function, index: request.index, bar: placed, byFirmware: false, window: .io))
            case .memory(_, let size, let is64Bit, let prefetchable):
                let alignment = max(size, minimumMemoryAlignment)
                var address: UInt64? = nil
                var window = PCIWindowKind.memory32
                if let low = memory32.allocate(size: size, alignment: alignment) {
                    address = low
                } else if is64Bit, memory64 != nil {
                    window = .memory64
                    address = memory64!.allocate(size: size, alignment: alignment)
                }
                guard let address else {
                    throw .windowExhausted(function: request.function, index: request.index, size: size, window: window)
                }
                let placed = PCIBAR.memory(address: address, size: size, is64Bit: is64Bit, isPrefetchable: prefetchable)
                planned.append(PCIBARAssignment(function: request.function, index: request.index, bar: placed, byFirmware: false, window: window))
            }
        }

        for assignment in planned {
            writeBAR(assignment.bar, function: assignment.function, index: assignment.index, access: access)
        }
        assignments += planned

        // Decoding and bus mastering for every function with a usable BAR.
        var enabled: [PCIAddress] = []
        for assignment in assignments where !enabled.contains(assignment.function) {
            enabled.append(assignment.function)
            let mine = assignments.filter { $0.function == assignment.function }
            var command = access.read16(assignment.function, offset: PCIHeader.command)
            if mine.contains(where: { !$0.bar.isIO }) { command |= PCIHeader.commandMemorySpace }
            if mine.contains(where: { $0.bar.isIO }) { command |= PCIHeader.commandIOSpace }
            command |= PCIHeader.commandBusMaster
            access.write16(assignment.function, offset: PCIHeader.command, command)
        }
        assignments.sort { ($0.function, $0.index) < ($1.function, $1.index) }
        return assignments
    }

    /// Writes a BAR's address with I/O and memory decoding off, keeping the
    /// type bits the device hardwires.
    static func writeBAR<Access: PCIConfigurationAccess>(_ bar: PCIBAR, function: PCIAddress, index: Int, access: Access) {
        let offset = PCIHeader.bar0 + 4 * index
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(function, offset: PCIHeader.command, command & ~(PCIHeader.commandIOSpace | PCIHeader.commandMemorySpace))
        access.write32(function, offset: offset, UInt32(truncatingIfNeeded: bar.address))
        if case .memory(_, _, true, _) = bar {
            access.write32(function, offset: offset + 4, UInt32(truncatingIfNeeded: bar.address >> 32))
        }
        access.write16(function, offset: PCIHeader.command, command)
    }
}
