// rumpuser(3) "condition variables": wait releases the virtual CPU (passing
// the interlock to hyp_backend_unschedule and hyp_backend_schedule),
// wait_nowrap does not, timedwait takes a relative timeout and returns NetBSD
// ETIMEDOUT (60). The variable is a futex sequence (see struct crumpuser_cv).

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always)
func conditionObject(_ cv: OpaquePointer) -> UnsafeMutablePointer<crumpuser_cv> {
    UnsafeMutablePointer<crumpuser_cv>(cv)
}

extension UnsafeMutablePointer where Pointee == crumpuser_cv {
    @inline(__always) var sequenceWord: UnsafeMutablePointer<UInt32> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: UInt32.self)
    }
    @inline(__always) var waitersWord: UnsafeMutablePointer<UInt32> {
        (UnsafeMutableRawPointer(self) + MemoryLayout<UInt32>.stride).assumingMemoryBound(to: UInt32.self)
    }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_init")
public func rumpuserCvInit(_ cvp: UnsafeMutablePointer<OpaquePointer?>) {
    let c = allocateLockObject(crumpuser_cv.self)
    c.pointee.sequence = 0
    c.pointee.waiters = 0
    cvp.pointee = OpaquePointer(c)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_destroy")
public func rumpuserCvDestroy(_ cv: OpaquePointer) {
    free(conditionObject(cv))
}

/// Sleeps on `c` having given up `m`; returns the futex result (0, EAGAIN,
/// EINTR: a wakeup, possibly spurious, which the contract allows; or
/// ETIMEDOUT). The caller retakes `m` through the ordinary lock path: no
/// waiter is ever moved onto the mutex's futex without marking it contended,
/// so a plain 0→1 acquisition cannot strand a sleeper.
@inline(__always)
func sleepOnCondition(
    _ c: UnsafeMutablePointer<crumpuser_cv>, releasing m: UnsafeMutablePointer<crumpuser_mtx>,
    deadline: UnsafePointer<timespec>?
) -> Int32 {
    let sequence = crumpuser_load_relaxed(c.sequenceWord)
    _ = crumpuser_fetch_add(c.waitersWord, 1)
    mutexReleased(m)
    unlockWord(lockWord(m))
    // A signal between reading the sequence and sleeping changes it, and
    // the futex then returns at once: no wakeup is lost.
    let rv = crumpuser_futex_wait(c.sequenceWord, sequence, deadline)
    _ = crumpuser_fetch_sub(c.waitersWord, 1)
    return rv
}

/// Retakes the interlock and the CPU after a wait, in NetBSD's order: for a
/// SPIN|KMUTEX interlock the CPU first and then the mutex (so that the
/// waiter never holds a spin mutex while waiting for a CPU); otherwise the
/// mutex first, then the CPU.
@inline(__always)
func reacquireAfterWait(_ m: UnsafeMutablePointer<crumpuser_mtx>, interlock: OpaquePointer, nlocks: Int32) {
    let spinKmutex = RUMPUSER_MTX_SPIN | RUMPUSER_MTX_KMUTEX
    if m.pointee.flags & spinKmutex == spinKmutex {
        crumpuser_schedule(nlocks, UnsafeMutableRawPointer(interlock))
        lockKeepingCPU(m)
        mutexTaken(m)
    } else {
        lockKeepingCPU(m)  // the CPU is released here already
        mutexTaken(m)
        crumpuser_schedule(nlocks, UnsafeMutableRawPointer(interlock))
    }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_wait")
public func rumpuserCvWait(_ cv: OpaquePointer, _ mtx: OpaquePointer) {
    let c = conditionObject(cv)
    let m = mutexObject(mtx)
    let nlocks = crumpuser_unschedule(UnsafeMutableRawPointer(mtx))
    _ = sleepOnCondition(c, releasing: m, deadline: nil)
    reacquireAfterWait(m, interlock: mtx, nlocks: nlocks)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_wait_nowrap")
public func rumpuserCvWaitNowrap(_ cv: OpaquePointer, _ mtx: OpaquePointer) {
    let c = conditionObject(cv)
    let m = mutexObject(mtx)
    _ = sleepOnCondition(c, releasing: m, deadline: nil)
    lockKeepingCPU(m)
    mutexTaken(m)
}

/// Waits at most `sec`.`nsec` (relative). 0 when woken, NetBSD ETIMEDOUT
/// when the time ran out. The deadline is taken before the CPU is released.
@_spi(RumpUserABI) @_cdecl("rumpuser_cv_timedwait")
public func rumpuserCvTimedwait(_ cv: OpaquePointer, _ mtx: OpaquePointer, _ sec: Int64, _ nsec: Int64) -> Int32 {
    let c = conditionObject(cv)
    let m = mutexObject(mtx)
    var deadline = timespec()
    clock_gettime(CLOCK_MONOTONIC, &deadline)
    if sec > 0 || (sec == 0 && nsec > 0) {
        let total = Int64(deadline.tv_nsec) + max(0, nsec)
        deadline.tv_sec += Int(clamping: sec + total / 1_000_000_000)
        deadline.tv_nsec = Int(total % 1_000_000_000)
    }
    let nlocks = crumpuser_unschedule(UnsafeMutableRawPointer(mtx))
    let rv = sleepOnCondition(c, releasing: m, deadline: &deadline)
    reacquireAfterWait(m, interlock: mtx, nlocks: nlocks)
    return rv == ETIMEDOUT ? NetBSDErrno.ETIMEDOUT.rawValue : 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_signal")
public func rumpuserCvSignal(_ cv: OpaquePointer) {
    let c = conditionObject(cv)
    _ = crumpuser_fetch_add(c.sequenceWord, 1)
    if crumpuser_load_seqcst(c.waitersWord) != 0 { crumpuser_futex_wake(c.sequenceWord, 1) }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_cv_broadcast")
public func rumpuserCvBroadcast(_ cv: OpaquePointer) {
    let c = conditionObject(cv)
    _ = crumpuser_fetch_add(c.sequenceWord, 1)
    if crumpuser_load_seqcst(c.waitersWord) != 0 { crumpuser_futex_wake(c.sequenceWord, Int32.max) }
}

/// The number of threads waiting; read with the interlock held.
@_spi(RumpUserABI) @_cdecl("rumpuser_cv_has_waiters")
public func rumpuserCvHasWaiters(_ cv: OpaquePointer, _ waiters: UnsafeMutablePointer<Int32>) {
    waiters.pointee = Int32(bitPattern: crumpuser_load_relaxed(conditionObject(cv).waitersWord))
}
