// RumpPCI: the rumpcomp_pci_* hypercalls NetBSD's rump PCI glue calls
// (sys/rump/dev/lib/libpci/rumpcomp_user.h, with RUMPCOMP_USERFEATURE_
// PCI_DMAFREE and _PCI_IOSPACE), on the Swift PCI layer and the page
// allocator. Every call returns 0 or a NetBSD errno and writes results
// through pointers, as the header specifies.
#if hasFeature(Embedded)
import CPUPrimitives

/// NetBSD errno values (sys/errno.h) the hypercalls return.
enum RumpPCIErrno {
    static var ioError: CInt { 5 }  // EIO
    static var noMemory: CInt { 12 }  // ENOMEM
    static var invalid: CInt { 22 }  // EINVAL
    static var notSupported: CInt { 45 }  // EOPNOTSUPP
}

/// State of the glue: INTx lines by cookie (`irq_map`).
enum RumpPCI {
    static var cookieLimit: Int { 64 }
    nonisolated(unsafe) static var interruptLines: [(function: PCIAddress, line: CInt)?] = []

    /// The function at bus/device/function, or nil for impossible numbers.
    static func address(_ bus: CUnsignedInt, _ device: CUnsignedInt, _ function: CUnsignedInt) -> PCIAddress? {
        guard bus < 256, device < 32, function < 8 else { return nil }
        return PCIAddress(bus: UInt8(bus), device: UInt8(device), function: UInt8(function))
    }

    /// A 32-bit register offset the mechanism reaches (ECAM: 4 KiB, ports: 256 bytes).
    static func register(_ offset: CInt) -> Int? {
        let limit: CInt
        switch PlatformPCI.access.mechanism {
        case .ports: limit = 256
        case .ecam: limit = 4096
        }
        guard offset >= 0, offset < limit else { return nil }
        return Int(offset) & ~3
    }

    /// Whether every page of [address, address + length) is mapped.
    static func isMapped(_ address: UInt64, _ length: UInt64) -> Bool {
        guard let tables = Platform.pageTables else { return false }
        var page = address & ~0xFFF
        let (end, overflow) = address.addingReportingOverflow(max(length, 1))
        if overflow { return false }
        while page < end {
            if tables.translate(VirtualAddress(page)) == nil { return false }
            page += 4096
        }
        return true
    }
}

/// I/O space needs no setup: ring 0 reaches every port with in/out.
@_cdecl("rumpcomp_pci_iospace_init")
public func rumpcomp_pci_iospace_init() -> CInt { 0 }

/// Reads the 32-bit register holding byte `reg` of a function's
/// configuration space. An absent function reads all ones (as hardware).
@_cdecl("rumpcomp_pci_confread")
public func rumpcomp_pci_confread(
    _ bus: CUnsignedInt, _ device: CUnsignedInt, _ function: CUnsignedInt, _ reg: CInt, _ value: UnsafeMutablePointer<CUnsignedInt>?
) -> CInt {
    guard let value, let target = RumpPCI.address(bus, device, function), let offset = RumpPCI.register(reg) else {
        return RumpPCIErrno.invalid
    }
    value.pointee = PlatformPCI.access.read32(target, offset: offset)
    return 0
}

/// Writes the 32-bit register holding byte `reg`.
@_cdecl("rumpcomp_pci_confwrite")
public func rumpcomp_pci_confwrite(
    _ bus: CUnsignedInt, _ device: CUnsignedInt, _ function: CUnsignedInt, _ reg: CInt, _ value: CUnsignedInt
) -> CInt {
    guard let target = RumpPCI.address(bus, device, function), let offset = RumpPCI.register(reg) else {
        return RumpPCIErrno.invalid
    }
    PlatformPCI.access.write32(target, offset: offset, value)
    return 0
}

/// Device memory at physical `address`: the kernel map is the identity, so
/// the address itself, once the range is known to be mapped (the 32-bit PCI
/// hole is, uncached); NULL for anything unmapped (BARs above 4 GiB).
@_cdecl("rumpcomp_pci_map")
public func rumpcomp_pci_map(_ address: CUnsignedLong, _ length: CUnsignedLong) -> UnsafeMutableRawPointer? {
    guard address != 0, RumpPCI.isMapped(UInt64(address), UInt64(length)) else { return nil }
    return UnsafeMutableRawPointer(bitPattern: UInt(address))
}

/// Remembers which INTx line a cookie stands for.
@_cdecl("rumpcomp_pci_irq_map")
public func rumpcomp_pci_irq_map(
    _ bus: CUnsignedInt, _ device: CUnsignedInt, _ function: CUnsignedInt, _ line: CInt, _ cookie: CUnsignedInt
) -> CInt {
    guard let target = RumpPCI.address(bus, device, function), Int(cookie) < RumpPCI.cookieLimit, line >= 0 else {
        return RumpPCIErrno.invalid
    }
    while RumpPCI.interruptLines.count <= Int(cookie) { RumpPCI.interruptLines.append(nil) }
    RumpPCI.interruptLines[Int(cookie)] = (target, line)
    return 0
}

/// Not available yet: the hw platform has no interrupt-handler registry
/// (LAPIC/IOAPIC routing is separate work), so establishing fails with
/// NULL, which the rump PCI glue reports as an attach failure.
@_cdecl("rumpcomp_pci_irq_establish")
public func rumpcomp_pci_irq_establish(
    _ cookie: CUnsignedInt, _ handler: (@convention(c) (UnsafeMutableRawPointer?) -> CInt)?, _ data: UnsafeMutableRawPointer?
) -> UnsafeMutableRawPointer? {
    nil
}

/// Physically contiguous, zeroed pages for DMA: `size` rounded up to pages,
/// aligned to `align` (a power of two; at least a page). Physical and
/// virtual addresses are equal (identity map).
@_cdecl("rumpcomp_pci_dmalloc")
public func rumpcomp_pci_dmalloc(
    _ size: Int, _ align: Int, _ physical: UnsafeMutablePointer<CUnsignedLong>?, _ virtual: UnsafeMutablePointer<CUnsignedLong>?
) -> CInt {
    guard let physical, let virtual, size > 0, align >= 0, align & (align &- 1) == 0 else { return RumpPCIErrno.invalid }
    guard Platform.heap != nil else { return RumpPCIErrno.noMemory }
    let pages = (size + 4095) / 4096
    guard let memory = Platform.heap!.pages.allocatePages(count: pages, alignment: max(align, 4096)) else {
        return RumpPCIErrno.noMemory
    }
    memory.initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096)
    virtual.pointee = CUnsignedLong(UInt(bitPattern: memory))
    physical.pointee = rumpcomp_pci_virt_to_mach(memory)
    return 0
}

/// Returns pages from `rumpcomp_pci_dmalloc`. Memory it did not hand out
/// is reported on the console and left alone.
@_cdecl("rumpcomp_pci_dmafree")
public func rumpcomp_pci_dmafree(_ memory: CUnsignedLong, _ size: Int) {
    guard let pointer = UnsafeMutableRawPointer(bitPattern: UInt(memory)), Platform.heap != nil,
        Platform.heap!.pages.allocatedPageCount(at: pointer) != nil
    else {
        Platform.write("rumpcomp_pci_dmafree: not DMA memory from rumpcomp_pci_dmalloc: ")
        Platform.writeHex(UInt64(memory))
        Platform.write("\n")
        return
    }
    Platform.heap!.pages.freePages(pointer)
}

/// A virtual address for DMA segments: one segment is its own cookie;
/// several are mapped only when physically contiguous (then the first
/// segment's address covers them all under the identity map).
@_cdecl("rumpcomp_pci_dmamem_map")
public func rumpcomp_pci_dmamem_map(
    _ segments: UnsafeMutableRawPointer?, _ count: Int, _ totalLength: Int, _ virtual: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> CInt {
    // struct rumpcomp_pci_dmaseg { unsigned long ds_pa, ds_len, ds_vacookie; }
    guard let segments, let virtual, count > 0 else { return RumpPCIErrno.invalid }
    let stride = 3 * MemoryLayout<CUnsignedLong>.stride
    func field(_ index: Int, _ word: Int) -> UInt64 {
        UInt64(segments.load(fromByteOffset: index * stride + word * MemoryLayout<CUnsignedLong>.stride, as: CUnsignedLong.self))
    }
    var covered: UInt64 = 0
    for index in 0..<count {
        if index > 0 && field(index, 0) != field(index - 1, 0) &+ field(index - 1, 1) { return RumpPCIErrno.notSupported }
        covered &+= field(index, 1)
    }
    guard covered >= UInt64(totalLength) else { return RumpPCIErrno.invalid }
    virtual.pointee = UnsafeMutableRawPointer(bitPattern: UInt(field(0, 2)))
    return 0
}

/// The bus (physical) address of a virtual address, from the live page
/// tables; 0 for an unmapped address.
@_cdecl("rumpcomp_pci_virt_to_mach")
public func rumpcomp_pci_virt_to_mach(_ virtual: UnsafeMutableRawPointer?) -> CUnsignedLong {
    let address = UInt64(UInt(bitPattern: virtual))
    guard let tables = Platform.pageTables else { return CUnsignedLong(address) }
    guard let translation = tables.translate(VirtualAddress(address)) else { return 0 }
    return CUnsignedLong(translation.physical.rawValue)
}
#endif
