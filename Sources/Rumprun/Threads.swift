// Threads: the application API for guest threads and synchronisation:
// Thread (spawn, join with a return value, detach, yield, sleep, exit,
// block/wake), Mutex, Condition (with timed wait), Semaphore, ReadWriteLock,
// WaitQueue and ThreadLocal. Threads run on every CPU that came up at boot
// (unbound) or on one CPU (bound at spawn); on its CPU a thread runs until
// it yields, sleeps, waits or exits (no preemption). Guest only
// (BareMetalKit ThreadRuntime).
#if hasFeature(Embedded)
import BareMetalKit

/// A guest thread.
public struct Thread {
    let control: ThreadControl

    /// Scheduling priorities: a runnable thread of a higher priority runs first.
    public enum Priority: Int {
        case low = 0
        case normal = 1
        case high = 2
        case highest = 3
    }

    /// Starts `body` on a new thread with a stack of `stackSize` bytes
    /// (whole pages, an unmapped guard page below it). Its return value is
    /// what `join` returns. `processor` binds the thread to that CPU
    /// (0 ..< `Rumprun.processorCount`); nil lets it run on any CPU. Nil
    /// when memory for the stack ran out or the CPU does not exist.
    public static func spawn(
        name: String = "thread", priority: Priority = .normal, stackSize: Int = 64 * 1024, processor: Int? = nil,
        _ body: @escaping () -> Int
    ) -> Thread? {
        do throws(ThreadError) {
            return Thread(control: try ThreadRuntime.spawn(
                name: Array(name.utf8), priority: priority.rawValue, stackSize: stackSize, processor: processor, body: body))
        } catch {
            return nil
        }
    }

    /// The CPU the thread is bound to (nil: any CPU).
    public var processor: Int? { control.processor }

    /// Waits for the thread to end and returns its value (a thread can be
    /// joined once; joining itself or twice stops the guest with a panic).
    public func join() -> Int {
        do throws(ThreadError) {
            return try ThreadRuntime.join(control)
        } catch {
            switch error {
            case .joinSelf: Rumprun.panic("Thread.join: a thread joined itself")
            case .alreadyJoined: Rumprun.panic("Thread.join: joined twice")
            default: Rumprun.panic("Thread.join: no such thread")
            }
        }
    }

    /// Lets the thread end without a join.
    public func detach() { ThreadRuntime.detach(control) }

    /// The calling thread.
    public static var current: Thread { Thread(control: ThreadRuntime.current!) }

    public var name: String { String(decoding: control.name, as: UTF8.self) }

    /// A small number that identifies the thread while it exists.
    public var identifier: Int { control.id.rawValue }

    /// Bytes of stack the thread has.
    public var stackSize: Int { Int(control.stackSize) }

    /// Address of the unmapped page below the stack.
    public var guardPage: UInt64 { control.guardPage }

    /// Lets other runnable threads of the same or higher priority run.
    public static func yield() { ThreadRuntime.yield() }

    /// Sleeps at least `nanoseconds`.
    public static func sleep(nanoseconds: UInt64) { ThreadRuntime.sleep(until: Clock.monotonic &+ nanoseconds) }

    /// Sleeps until `Clock.monotonic` reaches `deadline`.
    public static func sleep(until deadline: UInt64) { ThreadRuntime.sleep(until: deadline) }

    /// Ends the calling thread; `join` returns `value`.
    public static func exit(_ value: Int) -> Never { ThreadRuntime.exit(value) }

    /// Blocks the calling thread until another thread (or an interrupt
    /// handler) calls `wake` on it, or until `deadline`. Returns false on
    /// timeout. A wake that arrived first is not lost.
    @discardableResult
    public static func block(until deadline: UInt64? = nil) -> Bool { ThreadRuntime.block(deadline: deadline) == .signaled }

    /// Wakes the thread from `block`.
    public func wake() { ThreadRuntime.wake(control.id) }

    /// Context switches since boot.
    public static var contextSwitches: UInt64 { ThreadRuntime.contextSwitches }

    /// Unbound threads a CPU with nothing to run took from another CPU's queue.
    public static var steals: UInt64 { ThreadRuntime.steals }
}

/// A mutex that sleeps (hands off in FIFO order).
public final class Mutex {
    let mutex = ThreadMutex()
    public init() {}
    public func lock() { mutex.lock() }
    public func tryLock() -> Bool { mutex.tryLock() }
    public func unlock() { mutex.unlock() }
    public var isHeldByCurrentThread: Bool { mutex.isHeldByCurrentThread }

    public func withLock<Result>(_ body: () -> Result) -> Result {
        mutex.lock()
        defer { mutex.unlock() }
        return body()
    }
}

/// A condition variable.
public final class Condition {
    let condition = ThreadCondition()
    public init() {}

    /// Releases `mutex`, waits for `signal`/`broadcast`, takes `mutex` again.
    public func wait(_ mutex: Mutex) { condition.wait(mutex.mutex) }

    /// The same for at most `timeout` nanoseconds: false when it timed out.
    public func wait(_ mutex: Mutex, timeout: UInt64) -> Bool {
        condition.wait(mutex.mutex, deadline: Clock.monotonic &+ timeout) == .signaled
    }

    /// The same until `Clock.monotonic` reaches `deadline`: false on timeout.
    public func wait(_ mutex: Mutex, until deadline: UInt64) -> Bool {
        condition.wait(mutex.mutex, deadline: deadline) == .signaled
    }

    public func signal() { condition.signal() }
    public func broadcast() { condition.broadcast() }
}

/// A counting semaphore.
public final class Semaphore {
    let semaphore: ThreadSemaphore
    public init(count: Int) { semaphore = ThreadSemaphore(count: count) }
    public func down() { semaphore.down() }
    /// Takes a unit or gives up at `deadline`: false on timeout.
    public func down(until deadline: UInt64) -> Bool { semaphore.down(deadline: deadline) == .signaled }
    public func up() { semaphore.up() }
    public var count: Int { semaphore.count }
}

/// Many readers or one writer.
public final class ReadWriteLock {
    let lock = ThreadReadWriteLock()
    public init() {}
    public func lockForReading() { lock.lock(write: false) }
    public func lockForWriting() { lock.lock(write: true) }
    public func tryLockForReading() -> Bool { lock.tryLock(write: false) }
    public func tryLockForWriting() -> Bool { lock.tryLock(write: true) }
    public func unlock() { lock.unlock() }
    public func downgrade() { lock.downgrade() }
    public func tryUpgrade() -> Bool { lock.tryUpgrade() }
    /// Readers inside and whether a writer holds the lock.
    public var holders: (readers: Int, writing: Bool) { lock.holders }
}

/// Threads waiting for an event; `wakeOne`/`wakeAll` may come from interrupt handlers.
public final class WaitQueue {
    let queue = ThreadWaitQueue()
    public init() {}
    public func wait() { queue.wait() }
    /// False on timeout.
    public func wait(until deadline: UInt64) -> Bool { queue.wait(deadline: deadline) == .signaled }
    public func wakeOne() { queue.wakeOne() }
    public func wakeAll() { queue.wakeAll() }
}

/// A thread-local word (ELF TLS through FS: one of 64 slots in every
/// thread's TLS block, zero in a new thread).
public struct ThreadLocal {
    let slot: UInt32

    /// Nil when all 64 slots are taken.
    public init?() {
        guard let slot = ThreadLocalStorage.allocateSlot() else { return nil }
        self.slot = slot
    }

    public var value: UInt64 {
        get { ThreadLocalStorage.load(slot: slot) }
        nonmutating set { ThreadLocalStorage.store(newValue, slot: slot) }
    }
}
#endif
