// MemoryLock: the one lock over the memory every CPU shares — the page
// allocator, the heap on top of it and the kernel page tables (whose
// changes take frames from the allocator). Every path that touches
// `Platform.heap` or `Platform.pageTables` after boot holds it.
//
// It is a ticket lock (interrupts masked while held, so a handler can
// never spin on its own CPU's lock) made recursive per CPU: code that holds
// it may reach the heap again (a page-table change whose Swift code
// allocates, a nested helper) without deadlocking.
#if hasFeature(Embedded)
import CPUPrimitives

public enum MemoryLock {
    static let lock = TicketLock()
    /// The CPU index holding the lock, or -1. Only the holder writes its
    /// own index, so a CPU reads its own index here only while it holds it.
    nonisolated(unsafe) static var owner = -1
    nonisolated(unsafe) static var depth = 0

    /// Runs `body` holding the lock.
    @inline(__always)
    public static func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let me = Processors.currentIndex
        if volatileOwner == me {
            depth += 1
            defer { depth -= 1 }
            return try body()
        }
        let interruptsWereEnabled = lock.lock()
        owner = me
        defer {
            owner = -1
            lock.unlock(restoring: interruptsWereEnabled)
        }
        return try body()
    }

    /// The owner as memory holds it now (not a value the compiler kept).
    static var volatileOwner: Int {
        withUnsafeMutablePointer(to: &owner) { pointer in
            Int(bitPattern: UInt(cpu_load64(UInt(bitPattern: pointer))))
        }
    }
}
#endif
