// GuestPlatformCore: the guest-world faces of the memory, CPU and time cores
// (page allocator from the memory map, kernel page tables and CR3, GDT/TSS
// with IST stacks, CPUID, TSC, kvmclock, PIT calibration, CMOS), called from
// the boot path. Intel SDM vol. 3A §4.5, §8.7; KVM MSRs 0x4b564d00-01.
#if hasFeature(Embedded)
import CPUPrimitives

/// The CPU's own CPUID instruction.
public struct HardwareCPUID: CPUIDSource {
    @inline(__always) public init() {}
    public func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDRegisters {
        var out: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &out) { cpu_cpuid(leaf, subleaf, $0.baseAddress!.assumingMemoryBound(to: UInt32.self)) }
        return CPUIDRegisters(eax: out.0, ebx: out.1, ecx: out.2, edx: out.3)
    }
}

/// Why a boot step of the platform core failed.
public enum PlatformCoreError: Error {
    case bootInfo(BootInfoError)
    case pageAllocator(PageAllocatorError)
    case pageTable(PageTableError)
    case outOfMemory(what: StaticString)
}

/// Boot steps built from the pure cores, in the order the boot path calls them.
public enum PlatformCore {
    /// The boot page tables identity-map this much.
    public static var identityMappedLimit: UInt64 { 0x1_0000_0000 }

    /// A page allocator over the usable memory above `floor` (the end of
    /// the image and of everything the loader placed) and below the
    /// identity-mapped limit, each region keeping its own metadata.
    /// Allocates nothing from the Swift heap.
    public static func makePageAllocator<Memory: PhysicalMemoryReader>(
        parser: BootInfoParser<Memory>, floor: UInt64
    ) throws(PlatformCoreError) -> PhysicalPageAllocator {
        var allocator = PhysicalPageAllocator()
        var failure: PageAllocatorError? = nil
        do throws(BootInfoError) {
            try parser.forEachMemoryRegion { region in
                guard region.kind == .usable, failure == nil else { return }
                let start = max(region.start, floor)
                let end = min(region.end, identityMappedLimit)
                guard end > start + 2 * PageSize.small else { return }
                do throws(PageAllocatorError) {
                    try allocator.addRegion(
                        PhysicalRange(start: PhysicalAddress(start), end: PhysicalAddress(end)),
                        carvingMetadataThrough: IdentityFrameMapping())
                } catch {
                    failure = error
                }
            }
        } catch {
            throw .bootInfo(error)
        }
        if let failure { throw .pageAllocator(failure) }
        guard allocator.statistics.totalFrames > 0 else { throw .outOfMemory(what: "no usable memory above the image") }
        return allocator
    }

    /// Builds the kernel's page tables: the null page unmapped, memory
    /// below 640 KiB read-write+NX, the VGA window 0xA0000–0xBFFFF uncached,
    /// the ROM area 0xC0000–0xFFFFF read-only+NX, the image per
    /// section (text R+X, rodata R+NX, data/bss RW+NX), every usable region
    /// RW+NX, ACPI regions read-only+NX, all identity-mapped. Device MMIO is
    /// mapped later with `mapDevice`. Allocates nothing from the Swift heap.
    public static func buildKernelPageTables<Memory: PhysicalMemoryReader>(
        parser: BootInfoParser<Memory>, image: KernelImageLayout, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> PageTableMapper<IdentityFrameMapping> {
        var mapper = try startKernelPageTables(image: image, allocator: &allocator)
        var failure: PageTableError? = nil
        do throws(BootInfoError) {
            try parser.forEachMemoryRegion { region in
                guard failure == nil else { return }
                do throws(PageTableError) {
                    try mapRegion(region, image: image, mapper: &mapper, allocator: &allocator)
                } catch {
                    failure = error
                }
            }
        } catch {
            throw .bootInfo(error)
        }
        if let failure { throw .pageTable(failure) }
        return mapper
    }

    /// The same from an already parsed memory map (`Platform.boot`).
    public static func buildKernelPageTables(
        regions: [MemoryRegion], image: KernelImageLayout, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> PageTableMapper<IdentityFrameMapping> {
        var mapper = try startKernelPageTables(image: image, allocator: &allocator)
        for region in regions {
            do throws(PageTableError) {
                try mapRegion(region, image: image, mapper: &mapper, allocator: &allocator)
            } catch {
                throw .pageTable(error)
            }
        }
        return mapper
    }

    static func startKernelPageTables(
        image: KernelImageLayout, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> PageTableMapper<IdentityFrameMapping> {
        do throws(PageTableError) {
            var mapper = try PageTableMapper(mapping: IdentityFrameMapping(), allocator: &allocator)
            try mapper.mapKernelImage(image, allocator: &allocator)
            // Conventional memory and EBDA; the VGA window uncached; option
            // and BIOS ROMs (where firmware tables live) read-only.
            try mapper.identityMap(
                PhysicalRange(start: 0, byteCount: 0xA_0000), attributes: .data, excluding: image.whole,
                allocator: &allocator)
            try mapper.identityMap(
                PhysicalRange(start: 0xA_0000, byteCount: 0x2_0000), attributes: .device, excluding: nil,
                allocator: &allocator)
            try mapper.identityMap(
                PhysicalRange(start: 0xC_0000, byteCount: 0x4_0000), attributes: .readOnly, excluding: nil,
                allocator: &allocator)
            return mapper
        } catch {
            throw .pageTable(error)
        }
    }

    static func mapRegion(
        _ region: MemoryRegion, image: KernelImageLayout, mapper: inout PageTableMapper<IdentityFrameMapping>,
        allocator: inout PhysicalPageAllocator
    ) throws(PageTableError) {
        let attributes: MemoryAttributes
        switch region.kind {
        case .usable: attributes = .data
        case .acpiReclaimable, .acpiNonVolatile: attributes = .readOnly
        default: return
        }
        // The first MiB is mapped already.
        let start = max(region.start, 0x10_0000)
        guard region.end > start else { return }
        try mapper.identityMap(
            PhysicalRange(start: PhysicalAddress(start), end: PhysicalAddress(region.end)),
            attributes: attributes, excluding: image.whole, allocator: &allocator)
    }

    /// The TSC now.
    @inline(__always) public static func readTSC() -> UInt64 { cpu_rdtsc() }

    /// The TSC frequency measured against PIT channel 2 (1.193182 MHz) over
    /// `milliseconds` (at most 54), by polling its OUT2 bit in port 0x61.
    /// Returns nil when the PIT does not answer (no PIT, as on microvm
    /// without it).
    public static func calibrateTSCWithPIT(milliseconds: UInt32 = 10) -> TickScale? {
        let count = UInt32(1_193_182) * min(milliseconds, 54) / 1000
        let control = cpu_inb(0x61)
        cpu_outb(0x61, (control & ~0x02) & ~0x01)  // gate low, speaker off
        cpu_outb(0x43, 0xB0)  // channel 2, lobyte/hibyte, mode 0, binary
        cpu_outb(0x42, UInt8(truncatingIfNeeded: count))
        cpu_outb(0x42, UInt8(truncatingIfNeeded: count >> 8))
        // Mode 0 drives OUT2 low until the count expires; a high OUT2 now
        // means there is no PIT/port 0x61 (microvm reads 0xFF there).
        guard cpu_inb(0x61) & 0x20 == 0 else {
            cpu_outb(0x61, control)
            return nil
        }
        cpu_outb(0x61, (control & ~0x02) | 0x01)  // gate high: count down
        let start = cpu_rdtsc()
        var spins: UInt64 = 0
        while cpu_inb(0x61) & 0x20 == 0 {
            spins += 1
            if spins > 50_000_000 {
                cpu_outb(0x61, control)
                return nil
            }
        }
        let end = cpu_rdtsc()
        cpu_outb(0x61, control)
        return TickScale(ticks: end &- start, overNanoseconds: UInt64(count) * 1_000_000_000 / 1_193_182)
    }

    /// Asks KVM to keep a kvmclock record at `record` (32 bytes, 4-byte
    /// aligned, identity-mapped; MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01, bit 0
    /// enables). The caller checks `CPUInformation.hasKVMClock` first.
    public static func enableKVMClock(record: PhysicalAddress) {
        cpu_wrmsr(0x4B56_4D01, record.rawValue | 1)
    }

    /// A consistent copy of the kvmclock record (retrying while the
    /// hypervisor updates it) and the TSC read inside the same window.
    public static func readKVMClock(record: PhysicalAddress) -> (PVClockTimeInfo, UInt64) {
        let pointer = UnsafeRawPointer(IdentityFrameMapping().pointer(to: record))
        while true {
            let before = cpu_load32(UInt(record.rawValue))
            cpu_compiler_barrier()
            let copy = PVClockTimeInfo(from: pointer)
            let tsc = cpu_rdtsc()
            cpu_compiler_barrier()
            let after = cpu_load32(UInt(record.rawValue))
            if before & 1 == 0 && before == after && copy.version == before { return (copy, tsc) }
            cpu_pause()
        }
    }

    /// The CMOS RTC as Unix time; `centuryRegister` from the FADT (0: none).
    public static func readWallClock(centuryRegister: UInt8) throws(RealTimeClockError) -> Int64 {
        var clock = CMOSRealTimeClock(ports: HardwarePorts(), centuryRegister: centuryRegister)
        return try clock.read().unixTime()
    }
}
#endif
