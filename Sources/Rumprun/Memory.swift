// Memory: heap and physical-page statistics and the C heap's allocation
// functions for applications. In the guest the numbers are the platform's
// size-class heap and buddy page allocator; on a host they are nil.
#if hasFeature(Embedded)
import BareMetalKit
import CPUPrimitives
#else
#if canImport(Glibc)
import Glibc
#endif
#endif

/// A snapshot of the guest's memory.
public struct MemoryStatistics: Equatable, Sendable {
    /// Bytes the heap has handed out and not taken back (requested sizes
    /// rounded up to their size class or to whole pages).
    public var heapBytesInUse: Int
    /// The most `heapBytesInUse` has ever been.
    public var heapPeakBytesInUse: Int
    /// Bytes of pages the heap holds (slabs and large blocks).
    public var heapPageBytes: Int
    public var heapAllocationCount: Int
    public var heapFreeCount: Int
    /// Heap requests that could not be satisfied (nil returned).
    public var heapFailedAllocationCount: Int
    /// Page frames (4 KiB) under the page allocator, and how many are free,
    /// in use, and the most ever in use.
    public var totalPages: UInt64
    public var freePages: UInt64
    public var pagesInUse: UInt64
    public var peakPagesInUse: UInt64
    /// Frames holding the page allocator's own bookkeeping.
    public var metadataPages: UInt64

    public static var pageSize: Int { 4096 }
    /// Bytes in free pages.
    public var freeBytes: UInt64 { freePages * UInt64(Self.pageSize) }
    /// Bytes in pages in use (heap, page tables, stacks).
    public var bytesInUse: UInt64 { pagesInUse * UInt64(Self.pageSize) }
}

extension Rumprun {
    /// The guest's memory statistics now; nil on a host, or before the
    /// platform's heap exists.
    public static var memoryStatistics: MemoryStatistics? {
        #if hasFeature(Embedded)
        guard let heap = Platform.heapStatistics, let pages = Platform.pageStatistics else { return nil }
        return MemoryStatistics(
            heapBytesInUse: heap.bytesInUse, heapPeakBytesInUse: heap.peakBytesInUse, heapPageBytes: heap.pageBytes,
            heapAllocationCount: heap.allocationCount, heapFreeCount: heap.freeCount,
            heapFailedAllocationCount: heap.failedAllocationCount,
            totalPages: pages.totalFrames, freePages: pages.freeFrames, pagesInUse: pages.framesInUse,
            peakPagesInUse: pages.peakFramesInUse, metadataPages: pages.metadataFrames)
        #else
        return nil
        #endif
    }

    /// `byteCount` bytes aligned to `alignment` (a power of two, at least
    /// the size of a pointer), or nil when memory is exhausted or the
    /// alignment is invalid. The corresponding C function is
    /// `posix_memalign`.
    public static func allocateMemory(byteCount: Int, alignment: Int = 16) -> UnsafeMutableRawPointer? {
        var result: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&result, alignment, byteCount) == 0 else { return nil }
        return result
    }

    /// Grows or shrinks a block from `allocateMemory`, keeping its contents
    /// up to the smaller size; nil (and the old block untouched) when memory
    /// is exhausted. The corresponding C function is `realloc`.
    public static func reallocateMemory(_ pointer: UnsafeMutableRawPointer?, byteCount: Int) -> UnsafeMutableRawPointer? {
        realloc(pointer, byteCount)
    }

    /// Returns a block from `allocateMemory` or `reallocateMemory`. The
    /// corresponding C function is `free`.
    public static func freeMemory(_ pointer: UnsafeMutableRawPointer?) {
        free(pointer)
    }
}
