// Paravirtualization: what a platform other than hw (a Xen PV domain,
// XenPVKit) needs of the shared runtime when it starts it without
// bmk_boot_main: a heap over memory it mapped itself, page runs from that
// heap's allocator (for stacks whose guard page it maps out itself), and
// the launcher's configuration. The privileged operations themselves are
// CPUPrimitives' PrivilegedOperations.h (link-time selected; a Xen image
// dispatches them through CXen's table). Nothing here runs on hw.
#if hasFeature(Embedded)
import CPUPrimitives

public enum Paravirtualization {
    /// A heap over the identity-mapped frames [firstFrame, endFrame), the
    /// allocator's bookkeeping carved from their start.
    public static func installHeap(firstFrame: UInt64, endFrame: UInt64) throws(PageAllocatorError) {
        var allocator = PhysicalPageAllocator()
        try allocator.addRegion(
            PhysicalRange(start: PhysicalAddress(firstFrame << 12), end: PhysicalAddress(endFrame << 12)),
            carvingMetadataThrough: IdentityFrameMapping())
        Platform.heap = SizeClassHeap(pages: PhysicalPageSource(allocator: allocator, mapping: IdentityFrameMapping()))
    }

    /// `count` contiguous frames from the heap's page allocator (address of
    /// the first), under the memory lock; nil when out of memory.
    public static func allocateFrames(count: UInt64) -> UInt64? {
        MemoryLock.withLock { Platform.heap?.pages.allocator.allocate(frameCount: count)?.rawValue }
    }

    /// Returns a run from `allocateFrames`; false if it was not one.
    public static func freeFrames(at address: UInt64) -> Bool {
        MemoryLock.withLock {
            do throws(PageAllocatorError) {
                try Platform.heap?.pages.allocator.free(PhysicalAddress(address))
                return true
            } catch {
                return false
            }
        }
    }

    /// Starts the monotonic clock from a TSC scale the platform publishes
    /// (Xen's vcpu_time_info), counting from the boot TSC.
    public static func startClock(scale: TickScale) {
        SystemClock.counter = CounterClock(scale: scale, originTicks: Platform.bootTimestamp)
        SystemClock.source = .xen
    }

    /// The launcher's JSON (or an empty command line) as the configuration.
    public static func setConfiguration(commandLine: [UInt8]) throws(GuestConfiguration.Error) {
        Platform.configurationStorage = try GuestConfiguration(commandLine: commandLine)
    }
}
#endif
