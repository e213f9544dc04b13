// FirmwareDiscovery: reads the firmware's description of the machine once
// at boot: the ACPI tables (RSDP from the PVH start info or the BIOS areas,
// ACPI 6.5 §5.2.5.1; MADT, HPET, MCFG, FADT) and, without ACPI, the Intel MP
// table (MP spec 1.4 ch. 4). Table pages the kernel page tables leave
// unmapped (SeaBIOS keeps its tables in E820 "reserved" memory) are mapped
// read-only before they are read.

/// Where the machine description came from.
public enum FirmwareSource: Equatable, Sendable {
    case acpi
    case multiprocessorTable
    case none
}

/// What the platform uses from the firmware tables.
public struct FirmwareDescription: Sendable {
    public var source: FirmwareSource = .none
    public var rsdpAddress: UInt64?
    public var madt: MultipleAPICDescriptionTable?
    public var hpet: HPETDescription?
    public var pciConfigurationRegions: [PCIConfigurationRegion]?
    public var fadt: FixedACPIDescription?
    public var multiprocessor: MPConfiguration?
    /// The first table that was found but rejected (the discovery goes on
    /// without it).
    public var error: FirmwareTableError?

    public init() {}

    /// Interrupt routing from the MADT, else from the MP table.
    public var interruptRouting: InterruptRouting? {
        if let madt, !madt.ioAPICs.isEmpty { return InterruptRouting(madt: madt) }
        if let multiprocessor, !multiprocessor.ioAPICs.isEmpty { return InterruptRouting(mp: multiprocessor) }
        return nil
    }

    /// Reads everything reachable through `memory`: ACPI from `rsdpAddress`
    /// (or a BIOS-area scan when nil), and the MP table when ACPI has no
    /// MADT. A bad table is recorded in `error`, never fatal.
    public static func discover<Memory: PhysicalMemoryReader>(memory: Memory, rsdpAddress: UInt64?) -> FirmwareDescription {
        var result = FirmwareDescription()
        func note(_ error: FirmwareTableError) { if result.error == nil { result.error = error } }
        if let rsdp = rsdpAddress ?? ACPITables<Memory>.findRSDP(memory: memory) {
            result.rsdpAddress = rsdp
            do throws(FirmwareTableError) {
                let tables = try ACPITables(memory: memory, rsdpAddress: rsdp)
                result.source = .acpi
                do throws(FirmwareTableError) { result.madt = try tables.madt() } catch { note(error) }
                do throws(FirmwareTableError) { result.hpet = try tables.hpet() } catch { note(error) }
                do throws(FirmwareTableError) { result.pciConfigurationRegions = try tables.pciConfigurationRegions() } catch { note(error) }
                do throws(FirmwareTableError) { result.fadt = try tables.fadt() } catch { note(error) }
            } catch {
                note(error)
            }
        }
        if result.madt == nil, let pointer = MPTable.findFloatingPointer(memory: memory) {
            do throws(FirmwareTableError) {
                let floating = try MPTable.floatingPointer(memory: memory, address: pointer)
                result.multiprocessor = try MPTable.configuration(memory: memory, floatingPointer: floating)
                if result.multiprocessor != nil && result.source == .none { result.source = .multiprocessorTable }
            } catch {
                note(error)
            }
        }
        return result
    }
}

#if hasFeature(Embedded)
import CPUPrimitives

/// Physical memory below 4 GiB for firmware tables: a page the live
/// kernel tables do not map is mapped read-only (no execute) first.
struct FirmwareTableMemory: PhysicalMemoryReader {
    func loadByte(at address: UInt64) -> UInt8? {
        guard address >= 0x1000, address < 0x1_0000_0000 else { return nil }
        guard FirmwareDiscovery.ensureMapped(page: address & ~0xFFF) else { return nil }
        return cpu_load8(UInt(address))
    }
}

/// The boot-time firmware description of the running guest.
public enum FirmwareDiscovery {
    nonisolated(unsafe) static var cached: FirmwareDescription? = nil
    nonisolated(unsafe) static var lastMappedPage: UInt64 = 0
    /// Pages this discovery mapped read-only.
    public nonisolated(unsafe) static var mappedPageCount = 0

    /// Parses the firmware tables on first use and keeps the result.
    public static var description: FirmwareDescription {
        if let cached { return cached }
        let found = FirmwareDescription.discover(memory: FirmwareTableMemory(), rsdpAddress: Platform.boot?.rsdpAddress)
        cached = found
        return found
    }

    /// Whether `page` is readable, mapping it read-only when the live
    /// tables lack it. Without live Swift tables (early boot) the boot map
    /// covers the first 4 GiB.
    static func ensureMapped(page: UInt64) -> Bool {
        if page == lastMappedPage { return true }
        guard var mapper = Platform.pageTables else { return true }
        if mapper.translate(VirtualAddress(page)) != nil {
            lastMappedPage = page
            return true
        }
        guard Platform.heap != nil else { return false }
        do throws(PageTableError) {
            try MemoryLock.withLock { () throws(PageTableError) in
                try mapper.map(
                    VirtualAddress(page), to: PhysicalAddress(page), size: .small, attributes: .readOnly,
                    allocator: &Platform.heap!.pages.allocator)
            }
        } catch {
            return false
        }
        cpu_invalidate_page(page)
        mappedPageCount += 1
        lastMappedPage = page
        return true
    }
}

extension Platform {
    /// The firmware's tables (MADT, HPET, MCFG, FADT, or the MP table),
    /// parsed once.
    public static var firmware: FirmwareDescription { FirmwareDiscovery.description }
}
#endif
