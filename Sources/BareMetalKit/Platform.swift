// Platform: the guest world's boot path and the C-level services the Swift
// runtime expects (putchar, posix_memalign, free, arc4random_buf), on the hw
// platform. Entered from entry.S as bmk_boot_main(protocol, info).
#if hasFeature(Embedded)
import CPUPrimitives
import Synchronization

/// Global state of the running guest (one CPU, no preemption yet).
public enum Platform {
    nonisolated(unsafe) static var console = PlatformConsole()
    nonisolated(unsafe) static var heap: SizeClassHeap<PhysicalPageSource<IdentityFrameMapping>>? = nil
    /// The live kernel page tables (set once they are active). Later frames
    /// for them come from `heap!.pages.allocator`, the buddy's one owner.
    nonisolated(unsafe) static var pageTables: PageTableMapper<IdentityFrameMapping>? = nil
    /// Start of the 32-bit PCI hole mapped uncached for device registers;
    /// the launcher keeps guest RAM below it (at most 3072 MiB).
    static var deviceWindowStart: UInt64 { 0xC000_0000 }
    nonisolated(unsafe) static var bootInfo: BootInfo? = nil
    nonisolated(unsafe) static var configurationStorage: GuestConfiguration? = nil

    /// The launcher's configuration (empty before boot finished parsing it).
    public static var configuration: GuestConfiguration { configurationStorage ?? GuestConfiguration() }

    /// The loader's description of memory and modules.
    public static var boot: BootInfo? { bootInfo }

    /// Heap counters.
    public static var heapStatistics: SizeClassHeapStatistics? { heap?.statistics }

    /// TSC value at the first instruction.
    public static var bootTimestamp: UInt64 { bmk_boot_timestamp() }

    public static func write(_ text: StaticString) {
        console.write(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    public static func write(_ bytes: [UInt8]) { console.write(contentsOf: bytes) }

    public static func writeHex(_ value: UInt64) {
        write("0x")
        var shift = 60
        var started = false
        while shift >= 0 {
            let digit = UInt8((value >> UInt64(shift)) & 0xF)
            if digit != 0 || started || shift == 0 {
                started = true
                console.write(digit < 10 ? 0x30 + digit : 0x57 + digit)
            }
            shift -= 4
        }
    }

    public static func writeDecimal(_ value: UInt64) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                      UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var rest = value
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[count] = 0x30 + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            while count > 0 {
                count -= 1
                console.write(buffer[count])
            }
        }
    }

    /// Ends the guest with an application exit status.
    public static func exit(_ status: Int32) -> Never {
        ConsoleLines.flushCurrentProcessor()
        halt(portValue: GuestExit.portValue(forStatus: status))
    }

    /// Prints `message` and stops the guest with the panic status.
    public static func panic(_ message: StaticString) -> Never {
        claimStop()
        write("rumprun: panic: ")
        write(message)
        write("\n")
        halt(portValue: GuestExit.panicValue)
    }

    /// The first CPU to panic or fault owns the console and the exit; any
    /// other CPU that gets here afterwards stops silently, so a guest stops
    /// with exactly one report.
    static func claimStop() {
        if stopClaimed.exchange(true, ordering: .acquiringAndReleasing) {
            while true { bmk_processor_halt_forever() }  // PrivilegedOperations.h
        }
        Processors.haltOthers()
    }

    static let stopClaimed = Atomic<Bool>(false)

    static func halt(portValue: UInt8) -> Never {
        bmk_xen_exit(portValue)  // on Xen: SCHEDOP_shutdown (XenPVKit; returns elsewhere)
        bmk_platform_stop(portValue)  // hw: isa-debug-exit (PrivilegedOperations.h)
        while true { bmk_processor_halt_forever() }
    }

    /// The hw stop (bmk_hw_platform_stop).
    static func stopOnHardware(portValue: UInt8) -> Never {
        cpu_outl(GuestExit.port, UInt32(portValue))
        // Without the debug-exit device the guest simply stops here.
        write("rumprun: halted (no isa-debug-exit device)\n")
        while true {
            cpu_disable_interrupts()
            cpu_halt()
        }
    }

    static func bootFailure(_ error: BootInfoError) -> Never {
        write("rumprun: panic: boot information rejected: ")
        switch error {
        case .unknownLoader(let number):
            write("entered by an unknown loader (protocol ")
            writeDecimal(UInt64(number))
            write(")")
        case .badPVHMagic(let found):
            write("PVH start info magic is ")
            writeHex(UInt64(found))
        case .unreadable(let address):
            write("unreadable address ")
            writeHex(address)
        case .stringTooLong(let address, let limit):
            write("string at ")
            writeHex(address)
            write(" longer than ")
            writeDecimal(UInt64(limit))
        case .noMemoryMap:
            write("no memory map")
        case .tooManyEntries(let what, let count, _):
            write(what)
            write(" has too many entries: ")
            writeDecimal(count)
        case .entrySizeTooSmall(let size):
            write("memory map entry size ")
            writeDecimal(UInt64(size))
        case .regionOverflows(let start, let length):
            write("region overflows: start ")
            writeHex(start)
            write(" length ")
            writeHex(length)
        }
        write("\n")
        halt(portValue: GuestExit.panicValue)
    }

    static func configurationFailure(_ error: GuestConfiguration.Error) -> Never {
        write("rumprun: panic: bad configuration on the command line: ")
        switch error {
        case .malformedJSON(let json):
            write("malformed JSON at byte ")
            writeDecimal(UInt64(json.offset))
        case .notAnObject:
            write("not a JSON object")
        case .wrongType(let key):
            write("wrong type for key \"")
            write(Array(key.utf8))
            write("\"")
        }
        write("\n")
        halt(portValue: GuestExit.panicValue)
    }
}

/// Identity-mapped physical memory below 4 GiB (the boot page tables).
struct IdentityMappedMemory: PhysicalMemoryReader {
    func loadByte(at address: UInt64) -> UInt8? {
        guard address >= 0x1000, address < 0x1_0000_0000 else { return nil }
        return cpu_load8(UInt(address))
    }
}

@_cdecl("bmk_boot_main")
public func bootMain(_ protocolNumber: UInt32, _ infoAddress: UInt32) -> Never {
    Platform.console.configure()
    _ = bmk_xen_attach(protocolNumber, infoAddress)  // Xen PVH: hypercall page, console ring (XenPVKit; no-op elsewhere)
    Exceptions.install()
    // The TSC calibration window runs from here to SystemClock.start.
    SystemClock.beginCalibration()
    BootTrace.mark(.console)
    let parser: BootInfoParser<IdentityMappedMemory>
    let highest: UInt64
    do {
        parser = try BootInfoParser(memory: IdentityMappedMemory(), protocolNumber: protocolNumber, infoAddress: UInt64(infoAddress))
        highest = try parser.highestReferencedAddress()
    } catch {
        Platform.bootFailure(error)
    }

    // Physical pages: every usable region above the image and everything the
    // loader placed (buddy allocator, bookkeeping outside the Swift heap).
    let imageEnd = UInt64(bmk_image_end())
    let floor = (max(imageEnd, highest) + 0xFFF) & ~UInt64(0xFFF)
    var pages: PhysicalPageAllocator
    var mapper: PageTableMapper<IdentityFrameMapping>
    do throws(PlatformCoreError) {
        pages = try PlatformCore.makePageAllocator(parser: parser, floor: floor)
        // Page tables built in Swift replace the boot map: null page
        // unmapped, text R+X, rodata R+NX, data/bss/heap RW+NX, and the
        // 32-bit PCI hole (device registers, LAPIC, IOAPIC) uncached.
        mapper = try PlatformCore.buildKernelPageTables(parser: parser, image: PlatformCore.imageLayout, allocator: &pages)
        // Mapped before the tables are live, so no TLB entries need flushing
        // (PlatformCore.mapDevice would INVLPG every 4 KiB of the gigabyte).
        do throws(PageTableError) {
            try mapper.identityMap(
                PhysicalRange(start: PhysicalAddress(Platform.deviceWindowStart), end: PhysicalAddress(0x1_0000_0000)),
                attributes: .device, excluding: nil, allocator: &pages)
        } catch {
            throw PlatformCoreError.pageTable(error)
        }
        PlatformCore.activate(mapper)
        // GDT and TSS with guarded IST stacks; exceptions switch to IST 1,
        // so a stack overflow into a guard page is still reported.
        try PlatformCore.loadDescriptorTables(istPages: 4, mapper: &mapper, allocator: &pages)
        Exceptions.install(interruptStack: 1)
    } catch {
        Platform.panic("setting up memory (page allocator, page tables, descriptor tables) failed")
    }
    Platform.heap = SizeClassHeap(pages: PhysicalPageSource(allocator: pages, mapping: IdentityFrameMapping()))
    Platform.pageTables = mapper
    BootTrace.mark(.memory)
    seedRandom()
    // The stack protector guard from the CSPRNG; this frame never returns,
    // so no check compares against the boot value after the change.
    bmk_set_stack_guard(freshStackGuard())
    BootTrace.mark(.random)

    do {
        let info = try parser.parse()
        Platform.bootInfo = info
        do {
            Platform.configurationStorage = try GuestConfiguration(commandLine: info.commandLine)
        } catch {
            Platform.configurationFailure(error)
        }
    } catch {
        Platform.bootFailure(error)
    }
    BootTrace.mark(.configuration)
    Interrupts.start()
    BootTrace.mark(.interrupts)
    Processors.startAll()
    BootTrace.mark(.processors)
    ThreadRuntime.runMain()
}

@_cdecl("bmk_hw_platform_stop")
public func hwPlatformStop(_ portValue: UInt8) {
    Platform.stopOnHardware(portValue: portValue)
}

@_cdecl("bmk_stack_smashed")
public func stackSmashed() -> Never {
    Platform.panic("stack smashing detected")
}

@_cdecl("putchar")
public func putchar(_ character: CInt) -> CInt {
    let byte = UInt8(truncatingIfNeeded: character)
    if ConsoleLines.put(byte) { return character }  // several CPUs: whole lines (SMP/ConsoleLines.swift)
    if byte == 0x0A { Platform.console.write(0x0D) }
    Platform.console.write(byte)
    return character
}

@_cdecl("bmk_heap_allocate")
public func heapAllocate(_ size: Int, _ alignment: Int) -> UnsafeMutableRawPointer? {
    MemoryLock.withLock { Platform.heap?.allocate(size: size, alignment: alignment) }
}

@_cdecl("bmk_heap_usable_size")
public func heapUsableSize(_ pointer: UnsafeMutableRawPointer) -> Int {
    do {
        return try MemoryLock.withLock { () throws(SizeClassHeapError) in try Platform.heap!.usableSize(pointer) }
    } catch {
        Platform.panic("realloc of a pointer the heap did not hand out")
    }
}

@_cdecl("bmk_heap_free")
public func heapFree(_ pointer: UnsafeMutableRawPointer?) {
    do {
        try MemoryLock.withLock { () throws(SizeClassHeapError) in try Platform.heap?.free(pointer) }
    } catch {
        Platform.panic("free of a pointer the heap did not hand out, or a double free")
    }
}

// Randomness (seedRandom, arc4random_buf and the rest) is in Random/.
#endif
