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
    /// No window has room for this BAR (`index` -1: for the memory window
    /// of the bridge at `function`).
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

/// Bus numbers for PCI-to-PCI bridges that no firmware numbered
/// (PCI-to-PCI Bridge 1.2 §3.2.5.2–5: primary, secondary and subordinate
/// bus number registers).
public enum PCIBusNumbering {
    /// 0x18 Primary Bus Number, 0x19 Secondary, 0x1A Subordinate (type 1).
    static var primaryBus: Int { 0x18 }
    static var subordinateBus: Int { 0x1A }

    /// Numbers every unnumbered bridge depth-first from `rootBus`: each gets
    /// the next free bus as its secondary bus, and as subordinate the last
    /// bus found below it. Bridges firmware already numbered are left as
    /// they are. Returns the highest bus number in use.
    @discardableResult
    public static func assign<Access: PCIConfigurationAccess>(_ access: Access, rootBus: UInt8 = 0) -> UInt8 {
        var next = rootBus
        number(bus: rootBus, next: &next, access: access, depth: 0)
        return next
    }

    static func number<Access: PCIConfigurationAccess>(bus: UInt8, next: inout UInt8, access: Access, depth: Int) {
        guard depth < 32 else { return }
        for function in PCIEnumerator.scan(bus: bus, access: access) where function.isBridge {
            let existing = function.secondaryBus ?? 0
            if existing != 0 {
                if existing > next { next = access.read8(function.address, offset: subordinateBus) }
                continue
            }
            guard next < 255 else { return }
            next += 1
            let secondary = next
            access.write8(function.address, offset: primaryBus, bus)
            access.write8(function.address, offset: PCIHeader.secondaryBus, secondary)
            // Open to the end while the buses below are scanned.
            access.write8(function.address, offset: subordinateBus, 255)
            number(bus: secondary, next: &next, access: access, depth: depth + 1)
            access.write8(function.address, offset: subordinateBus, next)
        }
    }
}

public enum PCIResourceAssigner {
    /// Memory BARs get at least a page, so every device's registers can be
    /// mapped (and protected) on their own.
    public static var minimumMemoryAlignment: UInt64 { 4096 }
    /// Bridge memory windows have 1 MiB granularity (base/limit bits 31:20).
    public static var bridgeWindowGranularity: UInt64 { 1 << 20 }

    /// A BAR to place, or a bridge's memory window (`index` -1).
    struct Item {
        var function: PCIAddress
        var index: Int
        var bar: PCIBAR?
        var bridge: PCIFunctionInfo?
        var size: UInt64
        var alignment: UInt64
    }

    /// Sizes every BAR of the type 0 functions in `functions`, keeps the
    /// ones firmware assigned (their ranges are reserved), and places the
    /// rest, largest alignment first, each naturally aligned: 32-bit memory
    /// BARs in the 32-bit window; 64-bit memory BARs there too while it has
    /// room (the boot identity map reaches only the first 4 GiB), else in
    /// the 64-bit window; I/O BARs in the I/O window, or left unassigned
    /// (I/O decoding stays off) when the bridge has none. A PCI-to-PCI
    /// bridge (numbered: see `PCIBusNumbering`) gets one non-prefetchable
    /// memory window in the 32-bit window covering everything below it,
    /// aligned to its largest member and to 1 MiB; its prefetchable and
    /// I/O windows are closed, so I/O BARs below bridges stay unassigned.
    /// Then memory decoding (I/O decoding when an I/O BAR was placed) and
    /// bus mastering are enabled on every function with a BAR and on every
    /// bridge with a window. When a window is exhausted nothing has been
    /// written yet.
    public static func assign<Access: PCIConfigurationAccess>(
        _ functions: [PCIFunctionInfo], resources: PCIHostBridgeResources, access: Access
    ) throws(PCIAssignmentError) -> [PCIBARAssignment] {
        var memory32 = PCIWindowAllocator(window: resources.memory32)
        var memory64 = resources.memory64.map { PCIWindowAllocator(window: $0) }
        var io = resources.io.map { PCIWindowAllocator(window: $0) }

        // Which bus each bridge leads to.
        var bridgeOf = [PCIFunctionInfo?](repeating: nil, count: 256)
        for function in functions where function.isBridge {
            if let secondary = function.secondaryBus, secondary != 0 { bridgeOf[Int(secondary)] = function }
        }

        var assignments: [PCIBARAssignment] = []
        var requests = [[Item]](repeating: [], count: 256)
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
                    let alignment = bar.isIO ? bar.size : max(bar.size, minimumMemoryAlignment)
                    requests[Int(function.address.bus)].append(
                        Item(function: function.address, index: index, bar: bar, bridge: nil, size: bar.size, alignment: alignment))
                }
            }
        }

        // Bridges as items of the bus they sit on, sized by what is below.
        var visiting = [Bool](repeating: false, count: 256)
        func addBridges(bus: Int) {
            guard !visiting[bus] else { return }
            visiting[bus] = true
            for function in functions where function.isBridge && Int(function.address.bus) == bus {
                guard let secondary = function.secondaryBus, secondary != 0, !visiting[Int(secondary)] else { continue }
                addBridges(bus: Int(secondary))
                var cursor: UInt64 = 0
                var alignment = bridgeWindowGranularity
                for item in sorted(requests[Int(secondary)]) where item.bar.map({ !$0.isIO }) ?? true {
                    cursor = (cursor + item.alignment - 1) & ~(item.alignment - 1)
                    cursor += item.size
                    alignment = max(alignment, item.alignment)
                }
                let size = (cursor + bridgeWindowGranularity - 1) & ~(bridgeWindowGranularity - 1)
                requests[bus].append(Item(function: function.address, index: -1, bar: nil, bridge: function, size: size, alignment: alignment))
            }
        }
        for bus in 0..<256 where bridgeOf[bus] == nil && (!requests[bus].isEmpty || functions.contains { Int($0.address.bus) == bus }) {
            addBridges(bus: bus)
        }

        // Everything is placed before anything is written: a failure leaves
        // the configuration space as it was.
        var planned: [PCIBARAssignment] = []
        var windows: [(bridge: PCIAddress, window: PCIWindow?)] = []
        func place(bus: Int, memory32: inout PCIWindowAllocator, memory64: inout PCIWindowAllocator?, io: inout PCIWindowAllocator?) throws(PCIAssignmentError) {
            for item in sorted(requests[bus]) {
                if let bridge = item.bridge {
                    guard item.size > 0, let secondary = bridge.secondaryBus else {
                        windows.append((item.function, nil))
                        continue
                    }
                    guard let base = memory32.allocate(size: item.size, alignment: item.alignment) else {
                        throw .windowExhausted(function: item.function, index: -1, size: item.size, window: .memory32)
                    }
                    let window = PCIWindow(base: base, size: item.size)
                    windows.append((item.function, window))
                    var inside = PCIWindowAllocator(window: window)
                    var noHigh: PCIWindowAllocator? = nil
                    var noIO: PCIWindowAllocator? = nil
                    try place(bus: Int(secondary), memory32: &inside, memory64: &noHigh, io: &noIO)
                    continue
                }
                switch item.bar! {
                case .io(_, let size):
                    guard io != nil else { continue }
                    guard let port = io!.allocate(size: UInt64(size), alignment: UInt64(size)) else {
                        throw .windowExhausted(function: item.function, index: item.index, size: UInt64(size), window: .io)
                    }
                    planned.append(PCIBARAssignment(
                        function: item.function, index: item.index, bar: .io(port: UInt32(port), size: size), byFirmware: false, window: .io))
                case .memory(_, let size, let is64Bit, let prefetchable):
                    var address: UInt64? = nil
                    var window = PCIWindowKind.memory32
                    if let low = memory32.allocate(size: size, alignment: item.alignment) {
                        address = low
                    } else if is64Bit, memory64 != nil {
                        window = .memory64
                        address = memory64!.allocate(size: size, alignment: item.alignment)
                    }
                    guard let address else {
                        throw .windowExhausted(function: item.function, index: item.index, size: size, window: window)
                    }
                    planned.append(PCIBARAssignment(
                        function: item.function, index: item.index,
                        bar: .memory(address: address, size: size, is64Bit: is64Bit, isPrefetchable: prefetchable),
                        byFirmware: false, window: window))
                }
            }
        }
        for bus in 0..<256 where bridgeOf[bus] == nil && !requests[bus].isEmpty {
            try place(bus: bus, memory32: &memory32, memory64: &memory64, io: &io)
        }

        for assignment in planned {
            writeBAR(assignment.bar, function: assignment.function, index: assignment.index, access: access)
        }
        for (bridge, window) in windows {
            writeBridgeWindow(window, bridge: bridge, access: access)
        }
        assignments += planned

        // Decoding and bus mastering for every function with a usable BAR,
        // and for bridges with a window (they forward the devices' DMA).
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
        for (bridge, window) in windows where window != nil {
            let command = access.read16(bridge, offset: PCIHeader.command)
            access.write16(bridge, offset: PCIHeader.command, command | PCIHeader.commandMemorySpace | PCIHeader.commandBusMaster)
        }
        assignments.sort { ($0.function, $0.index) < ($1.function, $1.index) }
        return assignments
    }

    /// Largest alignment first, then largest size, then address order.
    static func sorted(_ items: [Item]) -> [Item] {
        items.sorted {
            if $0.alignment != $1.alignment { return $0.alignment > $1.alignment }
            if $0.size != $1.size { return $0.size > $1.size }
            return ($0.function, $0.index) < ($1.function, $1.index)
        }
    }

    /// The bridge's window registers (PCI-to-PCI Bridge 1.2 §3.2.5.8–10):
    /// 0x20/0x22 Memory Base/Limit (address bits 31:20 in bits 15:4), the
    /// prefetchable window 0x24/0x26 (+ upper halves 0x28/0x2C) and the I/O
    /// window 0x1C/0x1D (+ upper halves 0x30/0x32) closed (base above limit).
    /// A nil window closes the memory window too.
    static func writeBridgeWindow<Access: PCIConfigurationAccess>(_ window: PCIWindow?, bridge: PCIAddress, access: Access) {
        if let window {
            access.write16(bridge, offset: 0x20, UInt16(truncatingIfNeeded: window.base >> 16) & 0xFFF0)
            access.write16(bridge, offset: 0x22, UInt16(truncatingIfNeeded: (window.end - 1) >> 16) & 0xFFF0)
        } else {
            access.write16(bridge, offset: 0x20, 0xFFF0)
            access.write16(bridge, offset: 0x22, 0x0000)
        }
        access.write16(bridge, offset: 0x24, 0xFFF0)
        access.write16(bridge, offset: 0x26, 0x0000)
        access.write32(bridge, offset: 0x28, 0)
        access.write32(bridge, offset: 0x2C, 0)
        access.write8(bridge, offset: 0x1C, 0xF0)
        access.write8(bridge, offset: 0x1D, 0x00)
        access.write16(bridge, offset: 0x30, 0)
        access.write16(bridge, offset: 0x32, 0)
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
