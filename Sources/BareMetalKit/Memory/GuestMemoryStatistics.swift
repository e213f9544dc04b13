// GuestMemoryStatistics: the page allocator's counters of the running guest
// (the heap's are `Platform.heapStatistics`).
#if hasFeature(Embedded)
extension Platform {
    /// Counters of the buddy allocator that owns every physical page.
    public static var pageStatistics: PageAllocatorStatistics? { heap?.pages.allocator.statistics }
}
#endif
