// Upcalls: the rump kernel's upcall table (rumpuser_init) and the two calls
// every blocking hypercall wraps around its wait: hyp_backend_unschedule
// before, hyp_backend_schedule after (rumpuser(3), "Scheduling"). Also the
// NetBSD errno numbers the guest implementation returns.
import BareMetalKit
import CPUPrimitives
import CRumpUserGuest

/// NetBSD errno values (sys/errno.h); the rumpuser ABI speaks these.
enum NetBSDError {
    static let ENOENT: Int32 = 2
    static let ESRCH: Int32 = 3
    static let EIO: Int32 = 5
    static let ENXIO: Int32 = 6
    static let EBADF: Int32 = 9
    static let EDEADLK: Int32 = 11
    static let ENOMEM: Int32 = 12
    static let EBUSY: Int32 = 16
    static let EEXIST: Int32 = 17
    static let EINVAL: Int32 = 22
    static let EROFS: Int32 = 30
    static let ERANGE: Int32 = 34
    static let EAGAIN: Int32 = 35
    static let EOPNOTSUPP: Int32 = 45
    static let ETIMEDOUT: Int32 = 60
}

enum Upcalls {
    /// A copy of the table handed to rumpuser_init (all nil before).
    nonisolated(unsafe) static var table = rumpuser_hyperup()

    /// Releases the calling thread's virtual CPU; returns the big-lock count
    /// the kernel hands back to `schedule`.
    @inline(__always)
    static func unschedule(interlock: UnsafeMutableRawPointer? = nil) -> Int32 {
        var locks: Int32 = 0
        table.hyp_backend_unschedule?(0, &locks, interlock)
        return locks
    }

    /// Takes a virtual CPU again.
    @inline(__always)
    static func schedule(_ locks: Int32, interlock: UnsafeMutableRawPointer? = nil) {
        table.hyp_backend_schedule?(locks, interlock)
    }

    /// Runs `body` with the virtual CPU released.
    @inline(__always)
    static func blocking<Result>(interlock: UnsafeMutableRawPointer? = nil, _ body: () -> Result) -> Result {
        let locks = unschedule(interlock: interlock)
        let result = body()
        schedule(locks, interlock: interlock)
        return result
    }
}

/// The calling guest thread (hypercalls run on guest threads only).
@inline(__always)
func currentThread() -> ThreadID {
    guard let thread = ThreadRuntime.current else { Platform.panic("rumpuser: hypercall outside a guest thread") }
    return thread.id
}

/// The one interlock over the bookkeeping of rumpuser locks, condition
/// variables and the block I/O queue: threads on several CPUs use them.
enum GuestInterlock {
    static let lock = RecursiveTicketLock()
}

/// Runs `body` holding the guest interlock, with interrupts disabled (a
/// ticket lock, recursive on one CPU: a section may call another).
@inline(__always)
func critical<Result>(_ body: () -> Result) -> Result {
    GuestInterlock.lock.withLock(body)
}

/// The bytes of a NUL-terminated C string.
func bytes(of string: UnsafePointer<CChar>, limit: Int = 4096) -> [UInt8] {
    var result: [UInt8] = []
    var index = 0
    while index < limit {
        let byte = UInt8(bitPattern: string[index])
        if byte == 0 { break }
        result.append(byte)
        index += 1
    }
    return result
}

func bytes(of string: StaticString) -> [UInt8] {
    Array(UnsafeBufferPointer(start: string.utf8Start, count: string.utf8CodeUnitCount))
}

@_cdecl("rumpuser_init")
public func rumpuserInit(_ version: Int32, _ hyperup: UnsafePointer<rumpuser_hyperup>?) -> Int32 {
    guard version == RUMPUSER_VERSION else {
        Platform.write("rumpuser: kernel wants hypercall version ")
        Platform.writeDecimal(UInt64(UInt32(bitPattern: version)))
        Platform.write(", this is version 17\n")
        return NetBSDError.EINVAL
    }
    guard let hyperup else { return NetBSDError.EINVAL }
    Upcalls.table = hyperup.pointee
    // Rump PCI interrupt handlers run on the platform's interrupt thread
    // with a rump CPU, as an lwp of their own (made once): the thread is a
    // component thread, so it uses the rumpuser_component_* mechanism.
    RumpPCIInterrupts.threadStart = { Component.makeKernelThread() }
    RumpPCIInterrupts.enterKernel = { Component.enter() }
    RumpPCIInterrupts.leaveKernel = { Component.leave() }
    return 0
}
