// The POSIX host implementation of ``RumpHypercalls``: the same code that the
// exported rumpuser_* symbols run, with Swift types and typed errors.

import CRumpUser

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

@inline(__always)
private func check(_ rv: Int32) throws(NetBSDErrno) {
    if rv != 0 { throw NetBSDErrno(rawValue: rv) }
}

/// rumpuser(3) on a POSIX host (Linux): what librumpuser.so exports.
///
/// Without a rump kernel (no ``initialize(upcalls:)``), the CPU-release
/// upcalls are no-ops, so the calls also serve a Swift program directly.
public struct POSIXHypercalls: RumpHypercalls, Sendable {
    public init() {}

    /// Installs a rump kernel's upcall table (what rumpuser_init does).
    /// The corresponding C function is `rumpuser_init`.
    public static func initialize(version: Int32 = RUMPUSER_VERSION, upcalls: UnsafePointer<rumpuser_hyperup>) throws(NetBSDErrno) {
        try check(rumpuserInit(version, upcalls))
    }

    public var version: Int32 { RUMPUSER_VERSION }

    // MARK: Memory

    public func allocate(byteCount: Int, alignment: Int) throws(NetBSDErrno) -> UnsafeMutableRawPointer {
        var memory: UnsafeMutableRawPointer?
        try check(rumpuserMalloc(byteCount, Int32(clamping: alignment), &memory))
        return memory!
    }

    public func deallocate(_ memory: UnsafeMutableRawPointer, byteCount: Int) {
        rumpuserFree(memory, byteCount)
    }

    public func mapAnonymous(byteCount: Int, alignmentBits: Int, executable: Bool) throws(NetBSDErrno) -> UnsafeMutableRawPointer {
        var memory: UnsafeMutableRawPointer?
        try check(rumpuserAnonmmap(nil, byteCount, Int32(clamping: alignmentBits), executable ? 1 : 0, &memory))
        return memory!
    }

    public func unmap(_ memory: UnsafeMutableRawPointer, byteCount: Int) {
        rumpuserUnmap(memory, byteCount)
    }

    // MARK: Files and I/O

    public func open(_ path: String, mode: RumpOpenMode) throws(NetBSDErrno) -> Int32 {
        var fd: Int32 = -1
        try check(path.withCString { rumpuserOpen($0, mode.rawValue, &fd) })
        return fd
    }

    public func close(_ fd: Int32) throws(NetBSDErrno) {
        try check(rumpuserClose(fd))
    }

    public func fileInfo(_ path: String) throws(NetBSDErrno) -> RumpFileInfo {
        var size: UInt64 = 0
        var type: Int32 = 0
        try check(path.withCString { rumpuserGetfileinfo($0, &size, &type) })
        return RumpFileInfo(size: size, type: RumpFileType(rawValue: type) ?? .other)
    }

    private static func offsetValue(_ offset: RumpFileOffset) -> Int64 {
        switch offset {
        case .at(let value): return value
        case .current: return Int64(RUMPUSER_IOV_NOSEEK)
        }
    }

    public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: RumpFileOffset) throws(NetBSDErrno) -> Int {
        var vector = rumpuser_iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var transferred = 0
        try check(rumpuserIovread(fd, &vector, 1, Self.offsetValue(offset), &transferred))
        return transferred
    }

    public func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: RumpFileOffset) throws(NetBSDErrno) -> Int {
        var vector = rumpuser_iovec(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress), iov_len: buffer.count)
        var transferred = 0
        try check(rumpuserIovwrite(fd, &vector, 1, Self.offsetValue(offset), &transferred))
        return transferred
    }

    public func sync(_ fd: Int32, flags: RumpSyncFlags, start: UInt64 = 0, length: UInt64 = 0) throws(NetBSDErrno) {
        try check(rumpuserSyncfd(fd, flags.rawValue, start, length))
    }

    public func blockIO(
        _ fd: Int32, _ operation: RumpBlockOperation, buffer: UnsafeMutableRawBufferPointer, offset: Int64,
        completion: @escaping @Sendable (Int, NetBSDErrno?) -> Void
    ) {
        let op: Int32
        switch operation {
        case .read: op = RUMPUSER_BIO_READ
        case .write(let synchronous): op = RUMPUSER_BIO_WRITE | (synchronous ? RUMPUSER_BIO_SYNC : 0)
        }
        let box = Unmanaged.passRetained(CompletionBox(completion)).toOpaque()
        rumpuserBio(fd, op, buffer.baseAddress, buffer.count, offset, { argument, transferred, error in
            let box = Unmanaged<CompletionBox>.fromOpaque(argument!).takeRetainedValue()
            box.body(transferred, error == 0 ? nil : NetBSDErrno(rawValue: error))
        }, box)
    }

    // MARK: Clocks

    public func time(_ clock: RumpClock) throws(NetBSDErrno) -> RumpTime {
        var seconds: Int64 = 0
        var nanoseconds = 0
        try check(rumpuserClockGettime(clock.rawValue, &seconds, &nanoseconds))
        return RumpTime(seconds: seconds, nanoseconds: nanoseconds)
    }

    public func sleep(_ clock: RumpClock, _ time: RumpTime) throws(NetBSDErrno) {
        try check(rumpuserClockSleep(clock.rawValue, time.seconds, time.nanoseconds))
    }

    // MARK: Host parameters, entropy, console, signals

    public func parameter(_ name: String) throws(NetBSDErrno) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let rv = name.withCString { name in
            buffer.withUnsafeMutableBytes { rumpuserGetparam(name, $0.baseAddress!, $0.count) }
        }
        try check(rv)
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }

    public func randomBytes(into buffer: UnsafeMutableRawBufferPointer, flags: RumpRandomFlags = []) throws(NetBSDErrno) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var filled = 0
        try check(rumpuserGetrandom(base, buffer.count, flags.rawValue, &filled))
        return filled
    }

    public func putCharacter(_ character: UInt8) {
        rumpuserPutchar(Int32(character))
    }

    public func kill(signal netbsdSignal: Int32) throws(NetBSDErrno) {
        try check(rumpuserKill(RUMPUSER_PID_SELF, netbsdSignal))
    }

    // MARK: Threads and lwps

    @discardableResult
    public func spawnThread(
        name: String, joinable: Bool, priority: Int32 = 0, cpuIndex: Int32 = -1, _ body: @escaping @Sendable () -> Void
    ) throws(NetBSDErrno) -> UnsafeMutableRawPointer? {
        let box = Unmanaged.passRetained(ThreadBox(body)).toOpaque()
        var cookie: UnsafeMutableRawPointer?
        let rv = name.withCString { name in
            rumpuserThreadCreate({ argument in
                Unmanaged<ThreadBox>.fromOpaque(argument!).takeRetainedValue().body()
                return nil
            }, box, name, joinable ? 1 : 0, priority, cpuIndex, &cookie)
        }
        if rv != 0 {
            Unmanaged<ThreadBox>.fromOpaque(box).release()
            throw NetBSDErrno(rawValue: rv)
        }
        return cookie
    }

    public func join(_ cookie: UnsafeMutableRawPointer) throws(NetBSDErrno) {
        try check(rumpuserThreadJoin(cookie))
    }

    public var currentLWP: RumpLWP? { crumpuser_tls_curlwp() }

    public func setCurrentLWP(_ lwp: RumpLWP?) {
        if let lwp {
            rumpuserCurlwpop(Int32(RUMPUSER_LWP_SET.rawValue), lwp)
        } else if let current = crumpuser_tls_curlwp() {
            rumpuserCurlwpop(Int32(RUMPUSER_LWP_CLEAR.rawValue), current)
        }
    }

    // MARK: Locks

    public func makeMutex(_ flags: RumpMutexFlags) -> POSIXMutex { POSIXMutex(flags) }
    public func makeRWLock() -> POSIXRWLock { POSIXRWLock() }
    public func makeCondition() -> POSIXCondition { POSIXCondition() }
}

private final class CompletionBox {
    let body: @Sendable (Int, NetBSDErrno?) -> Void
    init(_ body: @escaping @Sendable (Int, NetBSDErrno?) -> Void) { self.body = body }
}

private final class ThreadBox {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// A rumpuser mutex; destroyed with the object.
public final class POSIXMutex: RumpMutexProtocol, @unchecked Sendable {
    /// The `struct rumpuser_mtx *` to hand to C code.
    public let raw: OpaquePointer

    public init(_ flags: RumpMutexFlags) {
        var object: OpaquePointer?
        rumpuserMutexInit(&object, flags.rawValue)
        raw = object!
    }
    deinit { rumpuserMutexDestroy(raw) }

    public func enter() { rumpuserMutexEnter(raw) }
    public func enterWithoutReleasingCPU() { rumpuserMutexEnterNowrap(raw) }
    public func tryEnter() -> Bool { rumpuserMutexTryenter(raw) == 0 }
    public func exit() { rumpuserMutexExit(raw) }
    public var owner: RumpLWP? {
        var lwp: OpaquePointer?
        rumpuserMutexOwner(raw, &lwp)
        return lwp
    }
    public var isSpin: Bool { rumpuserMutexSpinP(raw) != 0 }
}

/// A rumpuser reader/writer lock; destroyed with the object.
public final class POSIXRWLock: RumpRWLockProtocol, @unchecked Sendable {
    /// The `struct rumpuser_rw *` to hand to C code.
    public let raw: OpaquePointer

    public init() {
        var object: OpaquePointer?
        rumpuserRwInit(&object)
        raw = object!
    }
    deinit { rumpuserRwDestroy(raw) }

    public func enter(_ kind: RumpLockKind) { rumpuserRwEnter(kind.rawValue, raw) }
    public func tryEnter(_ kind: RumpLockKind) -> Bool { rumpuserRwTryenter(kind.rawValue, raw) == 0 }
    public func tryUpgrade() -> Bool { rumpuserRwTryupgrade(raw) == 0 }
    public func downgrade() { rumpuserRwDowngrade(raw) }
    public func exit() { rumpuserRwExit(raw) }
    public func isHeld(_ kind: RumpLockKind) -> Bool {
        var held: Int32 = 0
        rumpuserRwHeld(kind.rawValue, raw, &held)
        return held != 0
    }
}

/// A rumpuser condition variable; destroyed with the object.
public final class POSIXCondition: RumpConditionProtocol, @unchecked Sendable {
    /// The `struct rumpuser_cv *` to hand to C code.
    public let raw: OpaquePointer

    public init() {
        var object: OpaquePointer?
        rumpuserCvInit(&object)
        raw = object!
    }
    deinit { rumpuserCvDestroy(raw) }

    public func wait(_ mutex: POSIXMutex) { rumpuserCvWait(raw, mutex.raw) }
    public func waitWithoutReleasingCPU(_ mutex: POSIXMutex) { rumpuserCvWaitNowrap(raw, mutex.raw) }
    public func wait(_ mutex: POSIXMutex, seconds: Int64, nanoseconds: Int64) -> Bool {
        rumpuserCvTimedwait(raw, mutex.raw, seconds, nanoseconds) == 0
    }
    public func signal() { rumpuserCvSignal(raw) }
    public func broadcast() { rumpuserCvBroadcast(raw) }
    public var waiterCount: Int {
        var count: Int32 = 0
        rumpuserCvHasWaiters(raw, &count)
        return Int(count)
    }
}
