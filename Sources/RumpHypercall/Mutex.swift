// rumpuser(3) "Mutexes": RUMPUSER_MTX_SPIN mutexes never release the virtual
// CPU; the others release it while they sleep; RUMPUSER_MTX_KMUTEX mutexes
// record the owning lwp. The lock word is a futex (see struct crumpuser_mtx).
//
// Waiters do not spin before sleeping. Spinning 100 pauses helped the
// two-thread mutex benchmark on a lightly loaded 2-core machine, but with
// more runnable threads than cores (the usual case for a rump kernel) it
// made condition variable hand-offs twice as slow as glibc's, which does
// not spin either. See Docs/rumphypercall.md, "Benchmark".

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always)
func mutexObject(_ mtx: OpaquePointer) -> UnsafeMutablePointer<crumpuser_mtx> {
    UnsafeMutablePointer<crumpuser_mtx>(mtx)
}

@inline(__always)
func lockWord(_ m: UnsafeMutablePointer<crumpuser_mtx>) -> UnsafeMutablePointer<UInt32> {
    UnsafeMutableRawPointer(m).assumingMemoryBound(to: UInt32.self)  // first member
}

/// Free → locked, if it is free.
@inline(__always)
func tryLockWord(_ word: UnsafeMutablePointer<UInt32>) -> Bool {
    crumpuser_cas_acquire(word, 0, 1) != 0
}

/// Sleeps until the word is ours, marking it contended (2).
@inline(never)
func sleepForWord(_ word: UnsafeMutablePointer<UInt32>) {
    while crumpuser_exchange_acquire(word, 2) != 0 {
        _ = crumpuser_futex_wait(word, 2, nil)
    }
}

@inline(__always)
func unlockWord(_ word: UnsafeMutablePointer<UInt32>) {
    if crumpuser_exchange_release(word, 0) == 2 {
        crumpuser_futex_wake(word, 1)
    }
}

/// Records the owner after the lock word was taken.
@inline(__always)
func mutexTaken(_ m: UnsafeMutablePointer<crumpuser_mtx>) {
    if m.pointee.flags & RUMPUSER_MTX_KMUTEX != 0 {
        assert(m.pointee.owner == nil, "KMUTEX already owned")
        m.pointee.owner = crumpuser_tls_curlwp()
    }
}

/// Forgets the owner before the lock word is given up.
@inline(__always)
func mutexReleased(_ m: UnsafeMutablePointer<crumpuser_mtx>) {
    if m.pointee.flags & RUMPUSER_MTX_KMUTEX != 0 {
        m.pointee.owner = nil
    }
}

/// Takes the lock word without releasing the CPU.
@inline(__always)
func lockKeepingCPU(_ m: UnsafeMutablePointer<crumpuser_mtx>) {
    let word = lockWord(m)
    if !tryLockWord(word) { sleepForWord(word) }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_init")
public func rumpuserMutexInit(_ mtxp: UnsafeMutablePointer<OpaquePointer?>, _ flags: Int32) {
    let m = allocateLockObject(crumpuser_mtx.self)
    m.pointee.word = 0
    m.pointee.owner = nil
    m.pointee.flags = flags
    mtxp.pointee = OpaquePointer(m)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_enter")
public func rumpuserMutexEnter(_ mtx: OpaquePointer) {
    let m = mutexObject(mtx)
    let word = lockWord(m)
    if _slowPath(!tryLockWord(word)) {
        if m.pointee.flags & RUMPUSER_MTX_SPIN != 0 {
            sleepForWord(word)
        } else {
            withCPUReleased { sleepForWord(word) }
        }
    }
    mutexTaken(m)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_enter_nowrap")
public func rumpuserMutexEnterNowrap(_ mtx: OpaquePointer) {
    let m = mutexObject(mtx)
    lockKeepingCPU(m)
    mutexTaken(m)
}

/// 0 when taken, NetBSD EBUSY when held by someone.
@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_tryenter")
public func rumpuserMutexTryenter(_ mtx: OpaquePointer) -> Int32 {
    let m = mutexObject(mtx)
    guard tryLockWord(lockWord(m)) else { return NetBSDErrno.EBUSY.rawValue }
    mutexTaken(m)
    return 0
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_exit")
public func rumpuserMutexExit(_ mtx: OpaquePointer) {
    let m = mutexObject(mtx)
    mutexReleased(m)
    unlockWord(lockWord(m))
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_destroy")
public func rumpuserMutexDestroy(_ mtx: OpaquePointer) {
    let m = mutexObject(mtx)
    if _slowPath(crumpuser_load_relaxed(lockWord(m)) != 0) { hypervisorPanic("mutex_destroy of a held mutex") }
    free(m)
}

/// The owning lwp of a KMUTEX mutex (NULL when free); NULL for others.
@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_owner")
public func rumpuserMutexOwner(_ mtx: OpaquePointer, _ owner: UnsafeMutablePointer<OpaquePointer?>) {
    owner.pointee = mutexObject(mtx).pointee.owner
}

@_spi(RumpUserABI) @_cdecl("rumpuser_mutex_spin_p")
public func rumpuserMutexSpinP(_ mtx: OpaquePointer) -> Int32 {
    mutexObject(mtx).pointee.flags & RUMPUSER_MTX_SPIN != 0 ? 1 : 0
}
