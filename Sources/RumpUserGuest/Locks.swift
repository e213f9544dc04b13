// Locks: rumpuser mutexes, reader/writer locks and condition variables on
// guest threads (rumpuser(3) "Locks", NetBSD rumpuser_pth.c semantics).
//
// Each lock keeps its own FIFO of waiting guest threads; a waiter blocks in
// the scheduler (ThreadRuntime.block) until the releasing thread hands it
// the lock and wakes it, so ownership passes without a race and a spurious
// wake only makes the waiter look again. Scheduling contract: enter,
// rw_enter, cv_wait, cv_timedwait and thread_join release the virtual CPU
// (hyp_backend_unschedule/schedule) only around an actual wait; the nowrap
// variants and SPIN mutexes wait holding it.
import BareMetalKit
import CRumpUserGuest

/// One thread waiting for a lock or a condition.
final class GuestWaiter {
    let thread: ThreadID
    let write: Bool
    var granted = false

    init(thread: ThreadID, write: Bool) {
        self.thread = thread
        self.write = write
    }
}

/// Waiting threads in arrival order.
struct WaitList {
    var waiters: [GuestWaiter] = []

    var isEmpty: Bool { waiters.isEmpty }
    var first: GuestWaiter? { waiters.first }

    mutating func enqueue(_ thread: ThreadID, write: Bool = false) -> GuestWaiter {
        let waiter = GuestWaiter(thread: thread, write: write)
        waiters.append(waiter)
        return waiter
    }

    /// Removes the first waiter, marks it granted and wakes it.
    @discardableResult
    mutating func grantFirst() -> GuestWaiter? {
        guard !waiters.isEmpty else { return nil }
        let waiter = waiters.removeFirst()
        waiter.granted = true
        ThreadRuntime.wake(waiter.thread)
        return waiter
    }

    mutating func remove(_ waiter: GuestWaiter) {
        waiters.removeAll { $0 === waiter }
    }
}

/// Blocks until `waiter` is granted, or until `deadline` (monotonic ns).
/// False when the deadline passed first; the caller then withdraws it.
func waitUntilGranted(_ waiter: GuestWaiter, deadline: UInt64? = nil) -> Bool {
    while !waiter.granted {
        if let deadline {
            let now = SystemClock.monotonicNanoseconds
            if now >= deadline { return waiter.granted }
            ThreadRuntime.block(deadline: timerDeadline(deadline, now: now))
        } else {
            ThreadRuntime.block(deadline: nil)
        }
    }
    return true
}

/// The deadline handed to the scheduler's timer: at most 2^50 ns (about
/// 13 days) ahead, so converting it to TSC ticks cannot overflow; callers
/// loop until the real deadline.
func timerDeadline(_ deadline: UInt64, now: UInt64) -> UInt64 {
    let horizon = UInt64(1) << 50
    return deadline &- now > horizon ? now &+ horizon : deadline
}

// MARK: Mutexes

final class GuestMutex {
    let flags: Int32
    /// The guest thread holding the mutex.
    var holder: ThreadID? = nil
    /// The lwp holding a KMUTEX (what rumpuser_mutex_owner reports).
    var owner: OpaquePointer? = nil
    var waiters = WaitList()

    init(flags: Int32) { self.flags = flags }

    var isSpin: Bool { flags & RUMPUSER_MTX_SPIN != 0 }
    var isKernelMutex: Bool { flags & RUMPUSER_MTX_KMUTEX != 0 }

    /// Takes the mutex if free: true when taken.
    func tryAcquire(_ me: ThreadID) -> Bool {
        critical {
            guard holder == nil else { return false }
            holder = me
            return true
        }
    }

    /// Takes the mutex, waiting (without touching the virtual CPU) if held.
    func acquire(_ me: ThreadID) {
        let waiter: GuestWaiter? = critical {
            if holder == nil {
                holder = me
                return nil
            }
            if holder == me { Platform.panic("rumpuser: a thread entered a mutex it holds") }
            return waiters.enqueue(me)
        }
        if let waiter { _ = waitUntilGranted(waiter) }
    }

    /// Releases the mutex, handing it to the first waiter.
    func release(_ me: ThreadID) {
        critical {
            guard holder == me else { Platform.panic("rumpuser: mutex exit by a thread that does not hold it") }
            holder = waiters.grantFirst()?.thread
        }
    }

    /// Bookkeeping once held (NetBSD mtxenter/mtxexit).
    func entered() {
        if isKernelMutex { owner = rumpuser_curlwp() }
    }

    func exiting() {
        if isKernelMutex { owner = nil }
    }

    var pointer: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }
    var interlock: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    static func from(_ pointer: OpaquePointer?) -> GuestMutex {
        guard let pointer else { Platform.panic("rumpuser: NULL mutex") }
        return Unmanaged<GuestMutex>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
}

@_cdecl("rumpuser_mutex_init")
public func rumpuserMutexInit(_ result: UnsafeMutablePointer<OpaquePointer?>?, _ flags: Int32) {
    guard let result else { Platform.panic("rumpuser: mutex_init without a result pointer") }
    let mutex = GuestMutex(flags: flags)
    result.pointee = OpaquePointer(Unmanaged.passRetained(mutex).toOpaque())
}

@_cdecl("rumpuser_mutex_enter")
public func rumpuserMutexEnter(_ pointer: OpaquePointer?) {
    let mutex = GuestMutex.from(pointer)
    let me = currentThread()
    if mutex.isSpin {
        mutex.acquire(me)
    } else if !mutex.tryAcquire(me) {
        Upcalls.blocking { mutex.acquire(me) }
    }
    mutex.entered()
}

@_cdecl("rumpuser_mutex_enter_nowrap")
public func rumpuserMutexEnterNowrap(_ pointer: OpaquePointer?) {
    let mutex = GuestMutex.from(pointer)
    mutex.acquire(currentThread())
    mutex.entered()
}

@_cdecl("rumpuser_mutex_tryenter")
public func rumpuserMutexTryenter(_ pointer: OpaquePointer?) -> Int32 {
    let mutex = GuestMutex.from(pointer)
    guard mutex.tryAcquire(currentThread()) else { return NetBSDError.EBUSY }
    mutex.entered()
    return 0
}

@_cdecl("rumpuser_mutex_exit")
public func rumpuserMutexExit(_ pointer: OpaquePointer?) {
    let mutex = GuestMutex.from(pointer)
    mutex.exiting()
    mutex.release(currentThread())
}

@_cdecl("rumpuser_mutex_destroy")
public func rumpuserMutexDestroy(_ pointer: OpaquePointer?) {
    let mutex = GuestMutex.from(pointer)
    if mutex.holder != nil || !mutex.waiters.isEmpty { Platform.panic("rumpuser: destroy of a held mutex") }
    Unmanaged<GuestMutex>.fromOpaque(UnsafeRawPointer(pointer!)).release()
}

/// The owning lwp of a KMUTEX; NULL for other mutexes (not tracked).
@_cdecl("rumpuser_mutex_owner")
public func rumpuserMutexOwner(_ pointer: OpaquePointer?, _ owner: UnsafeMutablePointer<OpaquePointer?>?) {
    owner?.pointee = GuestMutex.from(pointer).owner
}

@_cdecl("rumpuser_mutex_spin_p")
public func rumpuserMutexSpinP(_ pointer: OpaquePointer?) -> Int32 {
    GuestMutex.from(pointer).isSpin ? 1 : 0
}

// MARK: Reader/writer locks

/// Many readers or one writer, FIFO: a waiting writer holds back readers
/// that arrive after it (writer preference, as NetBSD's kernel rwlocks).
final class GuestRWLock {
    var readers = 0
    var writer: ThreadID? = nil
    var writerLWP: OpaquePointer? = nil
    var waiters = WaitList()

    func canEnter(write: Bool) -> Bool {
        waiters.isEmpty && writer == nil && (!write || readers == 0)
    }

    func take(_ me: ThreadID, write: Bool) {
        if write { writer = me } else { readers += 1 }
    }

    /// Hands the lock to the waiters at the head of the queue.
    func grant() {
        while let next = waiters.first {
            if next.write {
                guard readers == 0, writer == nil else { return }
                writer = next.thread
                waiters.grantFirst()
                return
            }
            guard writer == nil else { return }
            readers += 1
            waiters.grantFirst()
        }
    }

    static func from(_ pointer: OpaquePointer?) -> GuestRWLock {
        guard let pointer else { Platform.panic("rumpuser: NULL rwlock") }
        return Unmanaged<GuestRWLock>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
}

@_cdecl("rumpuser_rw_init")
public func rumpuserRwInit(_ result: UnsafeMutablePointer<OpaquePointer?>?) {
    guard let result else { Platform.panic("rumpuser: rw_init without a result pointer") }
    result.pointee = OpaquePointer(Unmanaged.passRetained(GuestRWLock()).toOpaque())
}

@_cdecl("rumpuser_rw_enter")
public func rumpuserRwEnter(_ kind: Int32, _ pointer: OpaquePointer?) {
    let lock = GuestRWLock.from(pointer)
    let me = currentThread()
    let write = UInt32(bitPattern: kind) == RUMPUSER_RW_WRITER.rawValue
    let entered: Bool = critical {
        if lock.writer == me { Platform.panic("rumpuser: rw_enter by the thread that holds it for writing") }
        guard lock.canEnter(write: write) else { return false }
        lock.take(me, write: write)
        return true
    }
    if !entered {
        Upcalls.blocking {
            let waiter: GuestWaiter? = critical {
                // The lock may have been released while the CPU was handed back.
                if lock.canEnter(write: write) {
                    lock.take(me, write: write)
                    return nil
                }
                return lock.waiters.enqueue(me, write: write)
            }
            if let waiter { _ = waitUntilGranted(waiter) }
        }
    }
    if write { lock.writerLWP = rumpuser_curlwp() }
}

@_cdecl("rumpuser_rw_tryenter")
public func rumpuserRwTryenter(_ kind: Int32, _ pointer: OpaquePointer?) -> Int32 {
    let lock = GuestRWLock.from(pointer)
    let me = currentThread()
    let write = UInt32(bitPattern: kind) == RUMPUSER_RW_WRITER.rawValue
    let entered: Bool = critical {
        guard lock.canEnter(write: write) else { return false }
        lock.take(me, write: write)
        return true
    }
    guard entered else { return NetBSDError.EBUSY }
    if write { lock.writerLWP = rumpuser_curlwp() }
    return 0
}

/// Exact: a sole reader becomes the writer at once; EBUSY with other readers.
@_cdecl("rumpuser_rw_tryupgrade")
public func rumpuserRwTryupgrade(_ pointer: OpaquePointer?) -> Int32 {
    let lock = GuestRWLock.from(pointer)
    let me = currentThread()
    let upgraded: Bool = critical {
        guard lock.writer == nil, lock.readers > 0 else { Platform.panic("rumpuser: rw_tryupgrade without a read hold") }
        guard lock.readers == 1 else { return false }
        lock.readers = 0
        lock.writer = me
        return true
    }
    guard upgraded else { return NetBSDError.EBUSY }
    lock.writerLWP = rumpuser_curlwp()
    return 0
}

/// The writer becomes a reader; no writer gets in between.
@_cdecl("rumpuser_rw_downgrade")
public func rumpuserRwDowngrade(_ pointer: OpaquePointer?) {
    let lock = GuestRWLock.from(pointer)
    let me = currentThread()
    critical {
        guard lock.writer == me else { Platform.panic("rumpuser: rw_downgrade by a thread that does not write") }
        lock.writer = nil
        lock.writerLWP = nil
        lock.readers = 1
        lock.grant()
    }
}

@_cdecl("rumpuser_rw_exit")
public func rumpuserRwExit(_ pointer: OpaquePointer?) {
    let lock = GuestRWLock.from(pointer)
    let me = currentThread()
    critical {
        if let writer = lock.writer {
            guard writer == me else { Platform.panic("rumpuser: rw_exit by a thread that does not write") }
            lock.writer = nil
            lock.writerLWP = nil
        } else {
            guard lock.readers > 0 else { Platform.panic("rumpuser: rw_exit of a lock nobody holds") }
            lock.readers -= 1
        }
        lock.grant()
    }
}

@_cdecl("rumpuser_rw_destroy")
public func rumpuserRwDestroy(_ pointer: OpaquePointer?) {
    let lock = GuestRWLock.from(pointer)
    if lock.writer != nil || lock.readers > 0 || !lock.waiters.isEmpty { Platform.panic("rumpuser: destroy of a held rwlock") }
    Unmanaged<GuestRWLock>.fromOpaque(UnsafeRawPointer(pointer!)).release()
}

/// WRITER: the calling lwp holds it for writing. READER: some reader holds
/// it (NetBSD cannot tell which lwp reads either).
@_cdecl("rumpuser_rw_held")
public func rumpuserRwHeld(_ kind: Int32, _ pointer: OpaquePointer?, _ held: UnsafeMutablePointer<Int32>?) {
    let lock = GuestRWLock.from(pointer)
    let result: Bool
    if UInt32(bitPattern: kind) == RUMPUSER_RW_WRITER.rawValue {
        result = lock.writer != nil && lock.writerLWP == rumpuser_curlwp()
    } else {
        result = lock.readers > 0
    }
    held?.pointee = result ? 1 : 0
}

// MARK: Condition variables

final class GuestCondition {
    var waiters = WaitList()
    /// Threads inside a wait (what has_waiters reports), including those
    /// already signalled but not yet back in the kernel.
    var count: Int32 = 0

    static func from(_ pointer: OpaquePointer?) -> GuestCondition {
        guard let pointer else { Platform.panic("rumpuser: NULL condition variable") }
        return Unmanaged<GuestCondition>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }

    /// The wait of cv_wait, cv_wait_nowrap and cv_timedwait: true when
    /// signalled, false when `deadline` passed. Returns holding `mutex`
    /// (and, with `wrap`, a virtual CPU: taken before the mutex for a
    /// SPIN|KMUTEX interlock, after it otherwise, as NetBSD does).
    func wait(_ mutex: GuestMutex, deadline: UInt64?, wrap: Bool) -> Bool {
        let me = currentThread()
        count += 1
        let locks = wrap ? Upcalls.unschedule(interlock: mutex.interlock) : 0
        mutex.exiting()
        let waiter: GuestWaiter = critical {
            let waiter = waiters.enqueue(me)
            mutex.release(me)
            return waiter
        }
        var signalled = waitUntilGranted(waiter, deadline: deadline)
        if !signalled {
            signalled = critical {
                if !waiter.granted { waiters.remove(waiter) }
                return waiter.granted
            }
        }
        let both = RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX
        if wrap && mutex.flags & both == both {
            Upcalls.schedule(locks, interlock: mutex.interlock)
            mutex.acquire(me)
            mutex.entered()
        } else {
            mutex.acquire(me)
            mutex.entered()
            if wrap { Upcalls.schedule(locks, interlock: mutex.interlock) }
        }
        count -= 1
        return signalled
    }
}

@_cdecl("rumpuser_cv_init")
public func rumpuserCvInit(_ result: UnsafeMutablePointer<OpaquePointer?>?) {
    guard let result else { Platform.panic("rumpuser: cv_init without a result pointer") }
    result.pointee = OpaquePointer(Unmanaged.passRetained(GuestCondition()).toOpaque())
}

@_cdecl("rumpuser_cv_destroy")
public func rumpuserCvDestroy(_ pointer: OpaquePointer?) {
    let condition = GuestCondition.from(pointer)
    if condition.count != 0 { Platform.panic("rumpuser: destroy of a condition variable with waiters") }
    Unmanaged<GuestCondition>.fromOpaque(UnsafeRawPointer(pointer!)).release()
}

@_cdecl("rumpuser_cv_wait")
public func rumpuserCvWait(_ pointer: OpaquePointer?, _ mutex: OpaquePointer?) {
    _ = GuestCondition.from(pointer).wait(GuestMutex.from(mutex), deadline: nil, wrap: true)
}

@_cdecl("rumpuser_cv_wait_nowrap")
public func rumpuserCvWaitNowrap(_ pointer: OpaquePointer?, _ mutex: OpaquePointer?) {
    _ = GuestCondition.from(pointer).wait(GuestMutex.from(mutex), deadline: nil, wrap: false)
}

/// Waits at most `seconds` + `nanoseconds` (relative) on the monotonic clock.
@_cdecl("rumpuser_cv_timedwait")
public func rumpuserCvTimedwait(_ pointer: OpaquePointer?, _ mutex: OpaquePointer?, _ seconds: Int64, _ nanoseconds: Int64) -> Int32 {
    let condition = GuestCondition.from(pointer)
    let guestMutex = GuestMutex.from(mutex)
    let secs = UInt64(max(seconds, 0))
    let nsecs = UInt64(max(min(nanoseconds, 999_999_999), 0))
    let (product, overflow) = secs.multipliedReportingOverflow(by: 1_000_000_000)
    let (deadline, late) = SystemClock.monotonicNanoseconds.addingReportingOverflow(overflow ? UInt64.max : product &+ nsecs)
    let signalled = condition.wait(guestMutex, deadline: late ? UInt64.max : deadline, wrap: true)
    return signalled ? 0 : NetBSDError.ETIMEDOUT
}

@_cdecl("rumpuser_cv_signal")
public func rumpuserCvSignal(_ pointer: OpaquePointer?) {
    let condition = GuestCondition.from(pointer)
    critical { _ = condition.waiters.grantFirst() }
}

@_cdecl("rumpuser_cv_broadcast")
public func rumpuserCvBroadcast(_ pointer: OpaquePointer?) {
    let condition = GuestCondition.from(pointer)
    critical {
        while condition.waiters.grantFirst() != nil {}
    }
}

@_cdecl("rumpuser_cv_has_waiters")
public func rumpuserCvHasWaiters(_ pointer: OpaquePointer?, _ waiters: UnsafeMutablePointer<Int32>?) {
    waiters?.pointee = GuestCondition.from(pointer).count
}
