// Synchronization: mutex, condition variable (with timed wait), counting
// semaphore, read-write lock and wait queue for guest threads. Each object
// is a handle on the scheduler's bookkeeping (Scheduler.swift); waiting
// switches to another thread, and every change happens under the
// scheduler lock with interrupts masked, so waiter lists and hand-offs are
// consistent across CPUs and no wake-up between two CPUs is lost. Misuse (unlocking a mutex one does not hold) stops the guest
// with a panic naming it. Semantics follow rumpuser(3).
#if hasFeature(Embedded)
import CPUPrimitives

/// A sleeping mutex: waiters queue in FIFO order and unlock hands the mutex
/// to the first of them.
public final class ThreadMutex {
    let object: WaitObjectID

    public init() {
        let flags = ThreadRuntime.lockScheduler()
        object = ThreadRuntime.scheduler.createMutex()
        ThreadRuntime.unlockScheduler(flags)
    }

    public func lock() {
        let flags = ThreadRuntime.lockScheduler()
        var acquired = false
        ThreadRuntime.check { () throws(SchedulerError) in acquired = try ThreadRuntime.scheduler.lock(object) }
        if !acquired { ThreadRuntime.reschedule(flags: flags) }
        ThreadRuntime.unlockScheduler(flags)
    }

    /// Takes the mutex if it is free; never waits.
    public func tryLock() -> Bool {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        var acquired = false
        ThreadRuntime.check { () throws(SchedulerError) in acquired = try ThreadRuntime.scheduler.tryLock(object) }
        return acquired
    }

    public func unlock() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.unlock(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    /// Whether the calling thread holds the mutex.
    public var isHeldByCurrentThread: Bool {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        guard let me = ThreadRuntime.current else { return false }
        return ThreadRuntime.scheduler.owner(of: object) == me.id
    }
}

/// A condition variable used with a `ThreadMutex`.
public final class ThreadCondition {
    let object: WaitObjectID

    public init() {
        let flags = ThreadRuntime.lockScheduler()
        object = ThreadRuntime.scheduler.createCondition()
        ThreadRuntime.unlockScheduler(flags)
    }

    /// Releases `mutex`, waits for a signal, and takes `mutex` again.
    public func wait(_ mutex: ThreadMutex) {
        _ = wait(mutex, deadline: nil)
    }

    /// The same with a deadline (monotonic ns): `.timedOut` when it passed
    /// first. The caller holds `mutex` again either way.
    public func wait(_ mutex: ThreadMutex, deadline: UInt64?) -> WakeReason {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        ThreadRuntime.check { () throws(SchedulerError) in
            try ThreadRuntime.scheduler.wait(object, mutex: mutex.object, deadline: deadline)
        }
        ThreadRuntime.reschedule(flags: flags)
        return ThreadRuntime.currentWakeReason
    }

    public func signal() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.signal(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    public func broadcast() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.broadcast(object) }
        ThreadRuntime.unlockScheduler(flags)
    }
}

/// A counting semaphore.
public final class ThreadSemaphore {
    let object: WaitObjectID

    public init(count: Int) {
        let flags = ThreadRuntime.lockScheduler()
        object = ThreadRuntime.scheduler.createSemaphore(count: count)
        ThreadRuntime.unlockScheduler(flags)
    }

    /// Takes a unit, waiting until one is available or `deadline` passes.
    @discardableResult
    public func down(deadline: UInt64? = nil) -> WakeReason {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        var taken = false
        ThreadRuntime.check { () throws(SchedulerError) in taken = try ThreadRuntime.scheduler.down(object, deadline: deadline) }
        if taken { return .signaled }
        ThreadRuntime.reschedule(flags: flags)
        return ThreadRuntime.currentWakeReason
    }

    /// Returns a unit (from a thread or an interrupt handler).
    public func up() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.up(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    public var count: Int {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        return ThreadRuntime.scheduler.count(of: object) ?? 0
    }
}

/// A read-write lock: many readers or one writer; FIFO, so a waiting writer
/// holds back readers that come after it.
public final class ThreadReadWriteLock {
    let object: WaitObjectID

    public init() {
        let flags = ThreadRuntime.lockScheduler()
        object = ThreadRuntime.scheduler.createReadWriteLock()
        ThreadRuntime.unlockScheduler(flags)
    }

    public func lock(write: Bool) {
        let flags = ThreadRuntime.lockScheduler()
        var entered = false
        ThreadRuntime.check { () throws(SchedulerError) in entered = try ThreadRuntime.scheduler.enter(object, write: write) }
        if !entered { ThreadRuntime.reschedule(flags: flags) }
        ThreadRuntime.unlockScheduler(flags)
    }

    public func tryLock(write: Bool) -> Bool {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        var entered = false
        ThreadRuntime.check { () throws(SchedulerError) in entered = try ThreadRuntime.scheduler.tryEnter(object, write: write) }
        return entered
    }

    public func unlock() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.exit(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    /// The writer becomes a reader.
    public func downgrade() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.downgrade(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    /// A sole reader becomes the writer; false when other readers are in.
    public func tryUpgrade() -> Bool {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        var upgraded = false
        ThreadRuntime.check { () throws(SchedulerError) in upgraded = try ThreadRuntime.scheduler.tryUpgrade(object) }
        return upgraded
    }

    /// Readers inside, and whether a writer holds it.
    public var holders: (readers: Int, writing: Bool) {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        guard let state = ThreadRuntime.scheduler.holders(of: object) else { return (0, false) }
        return (state.readers, state.writer != nil)
    }
}

/// A queue of threads waiting for an event (no mutex involved). `wakeOne`
/// and `wakeAll` may be called from interrupt handlers.
public final class ThreadWaitQueue {
    let object: WaitObjectID

    public init() {
        let flags = ThreadRuntime.lockScheduler()
        object = ThreadRuntime.scheduler.createCondition()
        ThreadRuntime.unlockScheduler(flags)
    }

    @discardableResult
    public func wait(deadline: UInt64? = nil) -> WakeReason {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.wait(object, deadline: deadline) }
        ThreadRuntime.reschedule(flags: flags)
        return ThreadRuntime.currentWakeReason
    }

    public func wakeOne() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.signal(object) }
        ThreadRuntime.unlockScheduler(flags)
    }

    public func wakeAll() {
        let flags = ThreadRuntime.lockScheduler()
        ThreadRuntime.check { () throws(SchedulerError) in try ThreadRuntime.scheduler.broadcast(object) }
        ThreadRuntime.unlockScheduler(flags)
    }
}
#endif
