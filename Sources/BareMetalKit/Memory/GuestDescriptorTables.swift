// GuestDescriptorTables: the guest steps that load CPU structures: CR3,
// INVLPG, LGDT/LTR with IST stacks behind guard pages (Intel SDM vol. 3A
// §4.10.4, §3.5.1, §8.7), through CPUStructures.h in CPUPrimitives.
#if hasFeature(Embedded)
import CPUPrimitives

/// A GDT and TSS written to memory, not yet loaded (one per CPU).
public struct PreparedDescriptorTables {
    public var base: UInt64
    public var taskState: TaskStateSegment
}

extension PlatformCore {
    /// The kernel image's parts from the linker script symbols
    /// (`__image_start`, `__text_end`, `__rodata_start`, `__rodata_end`,
    /// `__data_start`, `__image_end`).
    public static var imageLayout: KernelImageLayout {
        KernelImageLayout(
            text: PhysicalRange(start: address(bmk_image_start()), end: address(bmk_text_end())),
            readOnlyData: PhysicalRange(start: address(bmk_rodata_start()), end: address(bmk_rodata_end())),
            data: PhysicalRange(start: address(bmk_data_start()), end: address(bmk_image_end())))
    }

    static func address(_ value: UInt) -> PhysicalAddress { PhysicalAddress(UInt64(value)) }


    /// Maps device registers uncached (LAPIC 0xFEE00000, IOAPICs, HPET,
    /// ECAM, BARs) into live tables and flushes their TLB entries.
    public static func mapDevice(
        _ range: PhysicalRange, mapper: inout PageTableMapper<IdentityFrameMapping>, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) {
        do throws(PageTableError) {
            try mapper.identityMap(range, attributes: .device, excluding: nil, allocator: &allocator)
        } catch {
            throw .pageTable(error)
        }
        var page = range.start.alignedDown(to: PageSize.small).rawValue
        while page < range.end.rawValue {
            cpu_invalidate_page(page)
            page += PageSize.small
        }
    }

    /// Switches to `mapper`'s tables (CR3). The caller guarantees the tables
    /// map the running code, its stack and every structure still in use.
    public static func activate(_ mapper: PageTableMapper<IdentityFrameMapping>) {
        cpu_write_cr3(mapper.root.rawValue)
    }

    /// Allocates stacks of `pages` pages with an unmapped guard page below
    /// each, and returns the top (initial RSP, 16-byte aligned). `mapper`
    /// must be the live hierarchy: the guard page leaves every CPU's TLB
    /// (`TLBShootdown`), since another CPU may have used that memory.
    public static func allocateStack(
        pages: UInt64, mapper: inout PageTableMapper<IdentityFrameMapping>, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> UInt64 {
        guard let base = allocator.allocate(frameCount: pages + 1) else { throw .outOfMemory(what: "stack") }
        do throws(PageTableError) {
            try mapper.unmap(range: VirtualAddress(base.rawValue), byteCount: PageSize.small, allocator: &allocator)
        } catch {
            throw .pageTable(error)
        }
        TLBShootdown.invalidate(start: base.rawValue, byteCount: PageSize.small)
        return base.rawValue + (pages + 1) * PageSize.small
    }

    /// Builds a GDT (boot selectors 0x08/0x10, TSS at 0x18) and a TSS whose
    /// IST1–IST7 are fresh guarded stacks of `istPages` pages, loads both
    /// (lgdt, far return into CS, ltr) and returns the TSS so callers can
    /// name IST slots in IDT gates. Needs the kernel tables active.
    @discardableResult
    public static func loadDescriptorTables(
        istPages: UInt64, mapper: inout PageTableMapper<IdentityFrameMapping>, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> TaskStateSegment {
        let prepared = try prepareDescriptorTables(istPages: istPages, mapper: &mapper, allocator: &allocator)
        loadDescriptorTables(prepared)
        return prepared.taskState
    }

    /// Builds a GDT and TSS (with guarded IST stacks) in a fresh page without
    /// loading them: the boot processor prepares them for an application
    /// processor, which loads them itself with `loadDescriptorTables(_:)`.
    public static func prepareDescriptorTables(
        istPages: UInt64, mapper: inout PageTableMapper<IdentityFrameMapping>, allocator: inout PhysicalPageAllocator
    ) throws(PlatformCoreError) -> PreparedDescriptorTables {
        guard let page = allocator.allocate(order: 0) else { throw .outOfMemory(what: "GDT page") }
        let pointer = IdentityFrameMapping().pointer(to: page)
        var tss = TaskStateSegment()
        for index in 0..<7 {
            tss.interruptStacks[index] = try allocateStack(pages: istPages, mapper: &mapper, allocator: &allocator)
        }
        let tssAddress = page.rawValue + 64
        tss.store(to: pointer + 64)
        GlobalDescriptorTableLayout.store(to: pointer, taskStateBase: tssAddress)
        return PreparedDescriptorTables(base: page.rawValue, taskState: tss)
    }

    /// LGDT, far return into the kernel code selector, LTR, on this CPU.
    public static func loadDescriptorTables(_ prepared: PreparedDescriptorTables) {
        cpu_load_gdt(
            prepared.base, UInt16(GlobalDescriptorTableLayout.byteCount - 1),
            GlobalDescriptorTableLayout.kernelCodeSelector, GlobalDescriptorTableLayout.kernelDataSelector)
        cpu_load_task_register(GlobalDescriptorTableLayout.taskStateSelector)
    }

}
#endif
