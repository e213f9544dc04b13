// Internal helpers shared by the hypercalls: giving up and retaking the rump
// kernel CPU around host calls that may block (rumpuser(3), "UPCALLS AND RUMP
// KERNEL CONTEXT"), fatal errors, and a plain host mutex.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs `body` with the calling thread's virtual CPU released: the host call
/// inside may block. `body` returns its result together with the host errno
/// it saw; the errno is captured before the reschedule upcall can clobber it.
@inline(__always)
func withCPUReleased<Result>(interlock: UnsafeMutableRawPointer? = nil, _ body: () -> Result) -> Result {
    let nlocks = crumpuser_unschedule(interlock)
    let result = body()
    crumpuser_schedule(nlocks, interlock)
    return result
}

/// `0` or the NetBSD translation of the calling thread's current errno.
@inline(__always)
func netbsdErrnoFromCurrentHostErrno() -> Int32 {
    netbsdErrno(fromHost: crumpuser_errno())
}

/// A broken contract or an impossible host failure: like NetBSD's NOFAIL.
func hypervisorPanic(_ message: StaticString, _ hostError: Int32 = 0) -> Never {
    var text = "rumpuser: panic: "
    text += String(describing: message)
    if hostError != 0 {
        text += " (host error \(hostError))"
    }
    text += "\n"
    text.withCString { consoleWrite(2, $0, strlen($0)) }
    abort()
}

/// Panics unless a pthread call returned 0.
@inline(__always)
func noFail(_ result: Int32, _ message: StaticString) {
    if _slowPath(result != 0) { hypervisorPanic(message, result) }
}

/// Allocates `size` bytes aligned for a lock object on its own cache line.
func allocateLockObject<T>(_ type: T.Type) -> UnsafeMutablePointer<T> {
    var memory: UnsafeMutableRawPointer?
    let size = (MemoryLayout<T>.size + Int(CRUMPUSER_LOCK_ALIGN) - 1) & ~(Int(CRUMPUSER_LOCK_ALIGN) - 1)
    noFail(posix_memalign(&memory, Int(CRUMPUSER_LOCK_ALIGN), size), "lock allocation failed")
    memset(memory!, 0, size)
    return memory!.bindMemory(to: T.self, capacity: 1)
}

/// A host mutex at a stable address, for the implementation's own state.
struct HostMutex: @unchecked Sendable {
    let raw: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        raw = .allocate(capacity: 1)
        noFail(pthread_mutex_init(raw, nil), "pthread_mutex_init")
    }

    @inline(__always) func lock() { noFail(pthread_mutex_lock(raw), "pthread_mutex_lock") }
    @inline(__always) func tryLock() -> Bool { pthread_mutex_trylock(raw) == 0 }
    @inline(__always) func unlock() { noFail(pthread_mutex_unlock(raw), "pthread_mutex_unlock") }

    /// Takes the mutex, releasing the virtual CPU first only if it is busy.
    @inline(__always) func lockReleasingCPUIfBusy() {
        if !tryLock() { withCPUReleased { lock() } }
    }
}

/// A host condition variable on CLOCK_MONOTONIC.
struct HostCondition: @unchecked Sendable {
    let raw: UnsafeMutablePointer<pthread_cond_t>

    init() {
        raw = .allocate(capacity: 1)
        initializeMonotonicCondition(raw)
    }

    @inline(__always) func wait(_ mutex: HostMutex) {
        noFail(pthread_cond_wait(raw, mutex.raw), "pthread_cond_wait")
    }
    @inline(__always) func signal() { noFail(pthread_cond_signal(raw), "pthread_cond_signal") }
    @inline(__always) func broadcast() { noFail(pthread_cond_broadcast(raw), "pthread_cond_broadcast") }
}

func initializeMonotonicCondition(_ condition: UnsafeMutablePointer<pthread_cond_t>) {
    var attributes = pthread_condattr_t()
    pthread_condattr_init(&attributes)
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
    noFail(pthread_cond_init(condition, &attributes), "pthread_cond_init")
    pthread_condattr_destroy(&attributes)
}

/// Copies a C string into a caller's buffer of `capacity` bytes.
/// Returns false (copying nothing) when it does not fit with its NUL.
func copyCString(_ source: UnsafePointer<CChar>, to buffer: UnsafeMutableRawPointer, capacity: Int) -> Bool {
    let length = strlen(source)
    guard length < capacity else { return false }
    memcpy(buffer, source, length + 1)
    return true
}

/// The sink of rumpuser_dprintf and of panic messages: unbuffered, whole.
@_cdecl("crumpuser_console_write")
func consoleWrite(_ fd: Int32, _ text: UnsafePointer<CChar>?, _ length: Int) {
    guard var cursor = text.map(UnsafeRawPointer.init) else { return }
    var remaining = length
    while remaining > 0 {
        let written = write(fd, cursor, remaining)
        if written < 0 {
            if crumpuser_errno() == EINTR { continue }
            return
        }
        remaining -= written
        cursor += written
    }
}
