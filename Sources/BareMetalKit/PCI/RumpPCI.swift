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

/// Establishes `handler(data)` for the INTx line `rumpcomp_pci_irq_map`
/// gave the cookie. The handler runs on the rump interrupt thread with a
/// rump CPU held (`RumpPCIInterrupts`), never in the hardware handler.
/// Returns an opaque non-NULL handle, or NULL (the glue then fails the
/// attach) for an unmapped cookie, a line the firmware tables cannot
/// route, no interrupt layer, or no memory.
@_cdecl("rumpcomp_pci_irq_establish")
public func rumpcomp_pci_irq_establish(
    _ cookie: CUnsignedInt, _ handler: (@convention(c) (UnsafeMutableRawPointer?) -> CInt)?, _ data: UnsafeMutableRawPointer?
) -> UnsafeMutableRawPointer? {
    guard let handler, Int(cookie) < RumpPCI.interruptLines.count, let mapped = RumpPCI.interruptLines[Int(cookie)] else {
        return nil
    }
    return RumpPCIInterrupts.establish(cookie: Int(cookie), line: mapped.line, handler: handler, data: data)
}

/// Interrupts of rump kernel PCI drivers. NetBSD's interrupt handlers take
/// kernel locks, so they need a thread that holds a rump CPU: the hardware
/// handler only masks the line, marks it pending and wakes one interrupt
/// thread; that thread enters the rump kernel, calls every handler
/// established on the line, leaves, and unmasks the line. (A level-triggered
/// line stays masked until the driver has quieted its device, so it cannot
/// storm while the thread waits to run.)
public enum RumpPCIInterrupts {
    public typealias Handler = @convention(c) (UnsafeMutableRawPointer?) -> CInt

    /// Set by the rumpuser layer at `rumpuser_init`: run once by the
    /// interrupt thread before its first handler (to become a kernel lwp),
    /// and around each batch of handlers (take and release a rump CPU).
    /// Nil hooks call the handlers bare.
    public nonisolated(unsafe) static var threadStart: (() -> Void)? = nil
    public nonisolated(unsafe) static var enterKernel: (() -> Void)? = nil
    public nonisolated(unsafe) static var leaveKernel: (() -> Void)? = nil

    struct Line {
        var cookie: Int
        var registration: InterruptRegistration
        var pending = false
    }
    struct Established {
        var cookie: Int
        var handler: Handler
        var data: UnsafeMutableRawPointer?
    }
    nonisolated(unsafe) static var lines: [Line] = []
    nonisolated(unsafe) static var established: [Established] = []
    nonisolated(unsafe) static var thread: ThreadID? = nil

    /// Handler calls that claimed (returned nonzero) and that did not.
    public nonisolated(unsafe) static var claimedCount: UInt64 = 0
    public nonisolated(unsafe) static var unclaimedCount: UInt64 = 0

    static func establish(cookie: Int, line value: CInt, handler: Handler, data: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
        guard Interrupts.isRunning, value > 0, value < 255,
            let line = Interrupts.routing?.line(pciInterruptLine: UInt8(value))
        else { return nil }
        if thread == nil {
            do throws(ThreadError) {
                thread = try ThreadRuntime.spawn(name: Array("rumpintr".utf8), priority: ThreadRuntime.normalPriority) {
                    RumpPCIInterrupts.serve()
                }.id
            } catch {
                return nil
            }
        }
        let handle = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        handle.storeBytes(of: UInt64(established.count), as: UInt64.self)
        // With interrupts off, the line cannot fire between its unmasking
        // in `register` and `lines` knowing its registration.
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        established.append(Established(cookie: cookie, handler: handler, data: data))
        if !lines.contains(where: { $0.cookie == cookie }) {
            let index = lines.count
            do throws(InterruptError) {
                let registration = try Interrupts.register(line: line) { _ in RumpPCIInterrupts.interrupt(index) }
                lines.append(Line(cookie: cookie, registration: registration))
            } catch {
                established.removeLast()
                handle.deallocate()
                return nil
            }
        }
        return handle
    }

    /// The hardware handler of line `index`: mask, mark, wake.
    static func interrupt(_ index: Int) -> Bool {
        guard index < lines.count else { return false }
        Interrupts.setMasked(lines[index].registration, true)
        lines[index].pending = true
        if let thread { _ = ThreadRuntime.wake(thread) }
        return true
    }

    /// The interrupt thread: waits for pending lines and runs their handlers.
    static func serve() -> Int {
        threadStart?()
        while true {
            var next: Int? = nil
            Interrupts.withInterruptsDisabled {
                if let index = lines.firstIndex(where: { $0.pending }) {
                    lines[index].pending = false
                    next = index
                }
            }
            guard let index = next else {
                ThreadRuntime.block()
                continue
            }
            let cookie = lines[index].cookie
            enterKernel?()
            var position = 0
            while position < established.count {
                let entry = established[position]
                position += 1
                guard entry.cookie == cookie else { continue }
                if entry.handler(entry.data) != 0 { claimedCount += 1 } else { unclaimedCount += 1 }
            }
            leaveKernel?()
            Interrupts.setMasked(lines[index].registration, false)
        }
    }
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
    guard let memory = MemoryLock.withLock({ Platform.heap!.pages.allocatePages(count: pages, alignment: max(align, 4096)) }) else {
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
        MemoryLock.withLock({ Platform.heap!.pages.allocatedPageCount(at: pointer) }) != nil
    else {
        Platform.write("rumpcomp_pci_dmafree: not DMA memory from rumpcomp_pci_dmalloc: ")
        Platform.writeHex(UInt64(memory))
        Platform.write("\n")
        return
    }
    MemoryLock.withLock { Platform.heap!.pages.freePages(pointer) }
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
