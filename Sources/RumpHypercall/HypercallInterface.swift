// The rumpuser hypercall interface (rumpuser(3), version 17) as a Swift API,
// for Swift tools that host rump kernels: a protocol describing it and the
// value types that its calls take and return.

/// How a file is opened (RUMPUSER_OPEN_*).
public struct RumpOpenMode: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let readOnly = RumpOpenMode([])
    public static let writeOnly = RumpOpenMode(rawValue: 0x0001)
    public static let readWrite = RumpOpenMode(rawValue: 0x0002)
    /// Create the file if it is missing.
    public static let create = RumpOpenMode(rawValue: 0x0004)
    /// With ``create``: fail with EEXIST if the file exists.
    public static let exclusive = RumpOpenMode(rawValue: 0x0008)
    /// Advisory: the file will be used for block I/O.
    public static let blockIO = RumpOpenMode(rawValue: 0x0010)
}

/// What a path names (RUMPUSER_FT_*).
public enum RumpFileType: Int32, Sendable {
    case other = 0, directory = 1, regular = 2, blockDevice = 3, characterDevice = 4
}

public struct RumpFileInfo: Sendable, Hashable {
    public var size: UInt64
    public var type: RumpFileType
    public init(size: UInt64, type: RumpFileType) {
        self.size = size
        self.type = type
    }
}

/// Where a scatter/gather transfer happens.
public enum RumpFileOffset: Sendable, Hashable {
    /// At this byte offset; the file position is unchanged.
    case at(Int64)
    /// At the file position, which advances (RUMPUSER_IOV_NOSEEK).
    case current
}

/// The clocks of rumpuser_clock_gettime/sleep.
public enum RumpClock: Int32, Sendable {
    /// Wall time; a sleep on it lasts at least the given duration.
    case relativeWall = 0
    /// A monotonic clock; a sleep on it lasts until the given absolute time.
    case absoluteMonotonic = 1
}

public struct RumpTime: Sendable, Hashable, Comparable {
    public var seconds: Int64
    public var nanoseconds: Int
    public init(seconds: Int64, nanoseconds: Int) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
    public static func < (a: RumpTime, b: RumpTime) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

public struct RumpSyncFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let read = RumpSyncFlags(rawValue: 0x01)
    public static let write = RumpSyncFlags(rawValue: 0x02)
    public static let barrier = RumpSyncFlags(rawValue: 0x04)
    public static let sync = RumpSyncFlags(rawValue: 0x08)
}

public struct RumpRandomFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// True randomness rather than a PRNG's output.
    public static let hard = RumpRandomFlags(rawValue: 0x01)
    /// Return what is available instead of waiting.
    public static let noWait = RumpRandomFlags(rawValue: 0x02)
}

/// The direction of a block transfer (RUMPUSER_BIO_*).
public enum RumpBlockOperation: Sendable, Hashable {
    case read
    /// A write; `synchronous` commits it to stable storage (BIO_SYNC).
    case write(synchronous: Bool)
}

public struct RumpMutexFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// Never releases the virtual CPU, even while waiting.
    public static let spin = RumpMutexFlags(rawValue: 0x01)
    /// Tracks the owning lwp.
    public static let kernelMutex = RumpMutexFlags(rawValue: 0x02)
}

public enum RumpLockKind: Int32, Sendable {
    case reader = 0, writer = 1
}

/// The opaque rump kernel lwp (`struct lwp *`).
public typealias RumpLWP = OpaquePointer

/// A mutex of the hypercall interface.
public protocol RumpMutexProtocol: AnyObject {
    /// Takes the mutex; unless it is a spin mutex, releases the CPU if it must wait.
    func enter()
    /// Takes the mutex without ever releasing the CPU.
    func enterWithoutReleasingCPU()
    /// Takes the mutex if it is free.
    func tryEnter() -> Bool
    func exit()
    /// The owning lwp of a ``RumpMutexFlags/kernelMutex`` mutex.
    var owner: RumpLWP? { get }
    var isSpin: Bool { get }
}

/// A reader/writer lock of the hypercall interface.
public protocol RumpRWLockProtocol: AnyObject {
    func enter(_ kind: RumpLockKind)
    func tryEnter(_ kind: RumpLockKind) -> Bool
    /// A reader that is the only one becomes the writer.
    func tryUpgrade() -> Bool
    /// The writer becomes a reader with no writer in between.
    func downgrade()
    func exit()
    /// Writer: held by the calling lwp. Reader: held by some reader.
    func isHeld(_ kind: RumpLockKind) -> Bool
}

/// A condition variable of the hypercall interface.
public protocol RumpConditionProtocol: AnyObject {
    associatedtype Mutex: RumpMutexProtocol
    /// Waits, releasing the CPU and `mutex`.
    func wait(_ mutex: Mutex)
    /// Waits without releasing the CPU.
    func waitWithoutReleasingCPU(_ mutex: Mutex)
    /// Waits at most `seconds`.`nanoseconds`; false when the time ran out.
    func wait(_ mutex: Mutex, seconds: Int64, nanoseconds: Int64) -> Bool
    func signal()
    func broadcast()
    /// The number of waiters; ask with the mutex held.
    var waiterCount: Int { get }
}

/// The rumpuser hypercall interface, version 17. Every call that can fail
/// throws the NetBSD errno the C interface would return.
///
/// A host (``POSIXHypercalls``) and, later, the hw guest platform implement
/// it; code written against the protocol runs on both.
public protocol RumpHypercalls {
    associatedtype Mutex: RumpMutexProtocol
    associatedtype RWLock: RumpRWLockProtocol
    associatedtype Condition: RumpConditionProtocol where Condition.Mutex == Mutex

    /// The interface version (17).
    var version: Int32 { get }

    // Memory
    func allocate(byteCount: Int, alignment: Int) throws(NetBSDErrno) -> UnsafeMutableRawPointer
    func deallocate(_ memory: UnsafeMutableRawPointer, byteCount: Int)
    func mapAnonymous(byteCount: Int, alignmentBits: Int, executable: Bool) throws(NetBSDErrno) -> UnsafeMutableRawPointer
    func unmap(_ memory: UnsafeMutableRawPointer, byteCount: Int)

    // Files and I/O
    func open(_ path: String, mode: RumpOpenMode) throws(NetBSDErrno) -> Int32
    func close(_ fd: Int32) throws(NetBSDErrno)
    func fileInfo(_ path: String) throws(NetBSDErrno) -> RumpFileInfo
    func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: RumpFileOffset) throws(NetBSDErrno) -> Int
    func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: RumpFileOffset) throws(NetBSDErrno) -> Int
    func sync(_ fd: Int32, flags: RumpSyncFlags, start: UInt64, length: UInt64) throws(NetBSDErrno)
    /// Starts a block transfer; `completion(bytes, error)` runs later on the
    /// I/O thread. `buffer` must stay valid until then.
    func blockIO(
        _ fd: Int32, _ operation: RumpBlockOperation, buffer: UnsafeMutableRawBufferPointer, offset: Int64,
        completion: @escaping @Sendable (Int, NetBSDErrno?) -> Void)

    // Clocks
    func time(_ clock: RumpClock) throws(NetBSDErrno) -> RumpTime
    func sleep(_ clock: RumpClock, _ time: RumpTime) throws(NetBSDErrno)

    // Host parameters, entropy, console, signals
    func parameter(_ name: String) throws(NetBSDErrno) -> String
    func randomBytes(into buffer: UnsafeMutableRawBufferPointer, flags: RumpRandomFlags) throws(NetBSDErrno) -> Int
    func putCharacter(_ character: UInt8)
    func kill(signal netbsdSignal: Int32) throws(NetBSDErrno)

    // Threads and lwps
    /// Starts a host thread; returns a join cookie for a joinable thread.
    @discardableResult
    func spawnThread(
        name: String, joinable: Bool, priority: Int32, cpuIndex: Int32, _ body: @escaping @Sendable () -> Void
    ) throws(NetBSDErrno) -> UnsafeMutableRawPointer?
    func join(_ cookie: UnsafeMutableRawPointer) throws(NetBSDErrno)
    /// The lwp bound to the calling thread.
    var currentLWP: RumpLWP? { get }
    /// Binds (`lwp` non-nil) or unbinds (nil) the calling thread's lwp.
    func setCurrentLWP(_ lwp: RumpLWP?)

    // Locks
    func makeMutex(_ flags: RumpMutexFlags) -> Mutex
    func makeRWLock() -> RWLock
    func makeCondition() -> Condition
}
