// rumpuser(3) "rwlocks": shared/exclusive locks with exact tryupgrade and
// downgrade. Entering releases the virtual CPU only when it has to wait.
// Waiting writers keep new readers out, as NetBSD's kernel rwlocks do.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always)
func rwObject(_ rw: OpaquePointer) -> UnsafeMutablePointer<crumpuser_rw> {
    UnsafeMutablePointer<crumpuser_rw>(rw)
}

extension UnsafeMutablePointer where Pointee == crumpuser_rw {
    @inline(__always) var lockPointer: UnsafeMutablePointer<pthread_mutex_t> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: pthread_mutex_t.self)
    }
    @inline(__always) var readersCondition: UnsafeMutablePointer<pthread_cond_t> {
        UnsafeMutableRawPointer(self).advanced(by: MemoryLayout<crumpuser_rw>.offset(of: \.readers_cv)!)
            .assumingMemoryBound(to: pthread_cond_t.self)
    }
    @inline(__always) var writersCondition: UnsafeMutablePointer<pthread_cond_t> {
        UnsafeMutableRawPointer(self).advanced(by: MemoryLayout<crumpuser_rw>.offset(of: \.writers_cv)!)
            .assumingMemoryBound(to: pthread_cond_t.self)
    }

    @inline(__always) func lock() { noFail(pthread_mutex_lock(lockPointer), "rw lock") }
    @inline(__always) func unlock() { noFail(pthread_mutex_unlock(lockPointer), "rw unlock") }

    /// Takes the lock for `writer` if that is possible now (internal mutex held).
    @inline(__always) func tryTake(writer: Bool) -> Bool {
        if writer {
            guard pointee.writing == 0, pointee.readers == 0 else { return false }
            pointee.writing = 1
            pointee.writer = crumpuser_tls_curlwp()
        } else {
            guard pointee.writing == 0, pointee.waiting_writers == 0 else { return false }
            pointee.readers += 1
        }
        return true
    }

    /// Wakes whoever may proceed now (internal mutex held).
    @inline(__always) func wakeWaiters() {
        if pointee.writing != 0 { return }
        if pointee.waiting_writers > 0 {
            if pointee.readers == 0 { noFail(pthread_cond_signal(writersCondition), "rw wake") }
        } else if pointee.waiting_readers > 0 {
            noFail(pthread_cond_broadcast(readersCondition), "rw wake")
        }
    }
}

@_spi(RumpUserABI) @_cdecl("rumpuser_rw_init")
public func rumpuserRwInit(_ rwp: UnsafeMutablePointer<OpaquePointer?>) {
    let rw = allocateLockObject(crumpuser_rw.self)
    noFail(pthread_mutex_init(rw.lockPointer, nil), "rw_init")
    initializeMonotonicCondition(rw.readersCondition)
    initializeMonotonicCondition(rw.writersCondition)
    rwp.pointee = OpaquePointer(rw)
}

@_spi(RumpUserABI) @_cdecl("rumpuser_rw_enter")
public func rumpuserRwEnter(_ kind: Int32, _ lock: OpaquePointer) {
    let rw = rwObject(lock)
    let writer = kind == Int32(RUMPUSER_RW_WRITER.rawValue)
    if pthread_mutex_trylock(rw.lockPointer) == 0 {
        if rw.tryTake(writer: writer) {
            rw.unlock()
            return
        }
        rw.unlock()
    }
    withCPUReleased {
        rw.lock()
        if writer {
            rw.pointee.waiting_writers += 1
            while !(rw.pointee.writing == 0 && rw.pointee.readers == 0) {
                noFail(pthread_cond_wait(rw.writersCondition, rw.lockPointer), "rw_enter")
            }
            rw.pointee.waiting_writers -= 1
        } else {
            rw.pointee.waiting_readers += 1
            while !(rw.pointee.writing == 0 && rw.pointee.waiting_writers == 0) {
                noFail(pthread_cond_wait(rw.readersCondition, rw.lockPointer), "rw_enter")
            }
            rw.pointee.waiting_readers -= 1
        }
        _ = rw.tryTake(writer: writer)
        rw.unlock()
    }
}

/// 0 when taken, NetBSD EBUSY otherwise. Never releases the CPU.
@_spi(RumpUserABI) @_cdecl("rumpuser_rw_tryenter")
public func rumpuserRwTryenter(_ kind: Int32, _ lock: OpaquePointer) -> Int32 {
    let rw = rwObject(lock)
    let writer = kind == Int32(RUMPUSER_RW_WRITER.rawValue)
    guard writer || kind == Int32(RUMPUSER_RW_READER.rawValue) else { return NetBSDErrno.EINVAL.rawValue }
    rw.lock()
    let taken = rw.tryTake(writer: writer)
    rw.unlock()
    return taken ? 0 : NetBSDErrno.EBUSY.rawValue
}

/// A reader becomes the writer if it is the only reader: 0, else EBUSY.
@_spi(RumpUserABI) @_cdecl("rumpuser_rw_tryupgrade")
public func rumpuserRwTryupgrade(_ lock: OpaquePointer) -> Int32 {
    let rw = rwObject(lock)
    rw.lock()
    defer { rw.unlock() }
    guard rw.pointee.writing == 0, rw.pointee.readers == 1 else { return NetBSDErrno.EBUSY.rawValue }
    rw.pointee.readers = 0
    rw.pointee.writing = 1
    rw.pointee.writer = crumpuser_tls_curlwp()
    return 0
}

/// The writer becomes a reader without letting any writer in between.
@_spi(RumpUserABI) @_cdecl("rumpuser_rw_downgrade")
public func rumpuserRwDowngrade(_ lock: OpaquePointer) {
    let rw = rwObject(lock)
    rw.lock()
    if _slowPath(rw.pointee.writing == 0) { hypervisorPanic("rw_downgrade without the write lock") }
    rw.pointee.writing = 0
    rw.pointee.writer = nil
    rw.pointee.readers = 1
    // Readers may join the new reader unless writers are queued.
    if rw.pointee.waiting_writers == 0, rw.pointee.waiting_readers > 0 {
        noFail(pthread_cond_broadcast(rw.readersCondition), "rw_downgrade")
    }
    rw.unlock()
}

@_spi(RumpUserABI) @_cdecl("rumpuser_rw_exit")
public func rumpuserRwExit(_ lock: OpaquePointer) {
    let rw = rwObject(lock)
    rw.lock()
    if rw.pointee.writing != 0 {
        rw.pointee.writing = 0
        rw.pointee.writer = nil
        rw.wakeWaiters()
    } else {
        if _slowPath(rw.pointee.readers == 0) { hypervisorPanic("rw_exit of a free lock") }
        rw.pointee.readers -= 1
        rw.wakeWaiters()
    }
    rw.unlock()
}

@_spi(RumpUserABI) @_cdecl("rumpuser_rw_destroy")
public func rumpuserRwDestroy(_ lock: OpaquePointer) {
    let rw = rwObject(lock)
    noFail(pthread_cond_destroy(rw.readersCondition), "rw_destroy")
    noFail(pthread_cond_destroy(rw.writersCondition), "rw_destroy")
    noFail(pthread_mutex_destroy(rw.lockPointer), "rw_destroy")
    free(rw)
}

/// WRITER: 1 if the calling thread's lwp holds the write lock. READER: the
/// number of read holders (NetBSD reports "held by some reader").
@_spi(RumpUserABI) @_cdecl("rumpuser_rw_held")
public func rumpuserRwHeld(_ kind: Int32, _ lock: OpaquePointer, _ held: UnsafeMutablePointer<Int32>) {
    let rw = rwObject(lock)
    rw.lock()
    if kind == Int32(RUMPUSER_RW_WRITER.rawValue) {
        held.pointee = rw.pointee.writing != 0 && rw.pointee.writer == crumpuser_tls_curlwp() ? 1 : 0
    } else {
        held.pointee = Int32(rw.pointee.readers)
    }
    rw.unlock()
}
