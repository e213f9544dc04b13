// TicketLock: a fair spinlock for several CPUs. Each locker takes the next
// ticket and spins until the lock serves it; interrupts stay masked while it
// is held, so an interrupt handler on the same CPU can never spin on a lock
// its own CPU holds. A waiter answers TLB shootdowns while it spins.
#if hasFeature(Embedded)
import CPUPrimitives
import Synchronization

public struct TicketLock: ~Copyable, Sendable {
    let nextTicket = Atomic<UInt32>(0)
    let nowServing = Atomic<UInt32>(0)

    public init() {}

    /// Masks interrupts, then waits for this CPU's turn. Returns whether
    /// interrupts were enabled, for `unlock(restoring:)`.
    public func lock() -> Bool {
        let interruptsWereEnabled = cpu_interrupts_enabled() != 0
        cpu_disable_interrupts()
        let ticket = nextTicket.wrappingAdd(1, ordering: .relaxed).oldValue
        while nowServing.load(ordering: .acquiring) != ticket {
            // Interrupts are off: answer a TLB shootdown aimed at this CPU
            // here, or its initiator (maybe the holder) would wait forever.
            TLBShootdown.answerPending()
            cpu_pause()
        }
        return interruptsWereEnabled
    }

    public func unlock(restoring interruptsWereEnabled: Bool) {
        nowServing.wrappingAdd(1, ordering: .releasing)
        if interruptsWereEnabled { cpu_enable_interrupts() }
    }

    public func withLock<Result>(_ body: () -> Result) -> Result {
        let state = lock()
        defer { unlock(restoring: state) }
        return body()
    }
}
#endif

#if hasFeature(Embedded)
/// A ticket lock that the CPU holding it may take again (nested sections
/// on one CPU run without waiting; the outermost one releases it).
/// Interrupts stay masked while it is held, so nothing on the holding CPU
/// can switch threads inside it: the holder is the CPU, not a thread.
public struct RecursiveTicketLock: ~Copyable, Sendable {
    let lock = TicketLock()
    /// The holding CPU's index, or -1.
    let owner = Atomic<Int>(-1)

    public init() {}

    public func withLock<Result>(_ body: () -> Result) -> Result {
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        let me = Processors.currentIndex
        // Only this CPU ever stores its own index, so seeing it means this
        // CPU holds the lock already.
        if owner.load(ordering: .relaxed) == me { return body() }
        _ = lock.lock()
        owner.store(me, ordering: .relaxed)
        defer {
            owner.store(-1, ordering: .relaxed)
            lock.unlock(restoring: false)
        }
        return body()
    }
}
#endif
