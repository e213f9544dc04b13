// Scheduler: the thread state machine of the hw platform as pure logic:
// runnable/running/blocked/sleeping/exited threads, per-CPU priority run
// queues (FIFO within a priority) with thread affinity and work stealing,
// wait queues, joins, and mutex, condition
// variable (with timed wait), semaphore and read-write lock semantics, plus
// park/unpark (block until woken, with a pending-wake token so a wake from an
// interrupt handler before the park is not lost) and plain wait queues. The context-switch
// layer asks it who runs next; it never touches a stack. Semantics follow
// rumpuser(3) (NetBSD) for the synchronisation objects.
//
// Several CPUs share one instance under one lock (ThreadRuntime's). Each
// operation acts for `activeProcessor`, whose running thread is `current`.
// A thread made runnable goes to its bound CPU's queue, or (unbound) to an
// idle CPU, else to the least-loaded queue; a CPU whose own queues are
// empty steals the oldest unbound thread of the highest priority from the
// others. Idle CPUs that must look at their queues again, or arm their
// timer for an earlier deadline, are collected in `kicks` (a bit per CPU)
// for the runtime to wake with an IPI once it dropped the lock.

/// A thread's identity (an index into the scheduler's table).
public struct ThreadID: Hashable, Sendable {
    public let rawValue: Int
}

/// A mutex, condition variable, semaphore or read-write lock's identity.
public struct WaitObjectID: Hashable, Sendable {
    public let rawValue: Int
}

/// Why a thread is not runnable.
public enum BlockReason: Equatable, Sendable {
    case mutex(WaitObjectID)
    case condition(WaitObjectID)
    case semaphore(WaitObjectID)
    case readWrite(WaitObjectID)
    case join(ThreadID)
    case sleep
    /// Parked until `unpark` (block/wake).
    case parked
}

/// Where a thread is in its life.
public enum ThreadState: Equatable, Sendable {
    case runnable
    case running
    /// Waiting, with the deadline of a timed wait (nil: until woken).
    case blocked(BlockReason, deadline: UInt64?)
    case exited(status: Int)
}

/// How a wait ended.
public enum WakeReason: Equatable, Sendable {
    case signaled
    case timedOut
}

/// Misuse of the scheduler's API (a bug in the caller).
public enum SchedulerError: Error, Equatable {
    case noSuchThread(ThreadID)
    case noCurrentThread
    case notOwner(mutex: WaitObjectID, thread: ThreadID)
    case relock(mutex: WaitObjectID)
    case joinSelf
    case alreadyJoined(ThreadID)
    case wrongObject(WaitObjectID)
    /// Leaving a read-write lock that is not held that way.
    case notHeld(lock: WaitObjectID)
    /// A CPU index outside the CPUs the scheduler places threads on.
    case noSuchProcessor(Int)
}

/// The scheduler of every CPU (one instance, used under one lock).
public struct Scheduler {
    struct ThreadRecord {
        var state: ThreadState
        var priority: Int
        var wakeReason: WakeReason = .signaled
        var timer: TimerHandle? = nil
        var joiner: ThreadID? = nil
        var joined = false
        /// For a condition wait: the mutex to take again once woken.
        var reacquire: WaitObjectID? = nil
        /// For a read-write lock wait: whether the thread wants to write.
        var wantsWrite = false
        /// An `unpark` arrived while the thread was not parked.
        var wakePending = false
        /// The only CPU the thread may run on (nil: any).
        var affinity: Int? = nil
        /// The CPU it last ran on (where an unbound thread goes back to).
        var lastProcessor = 0
    }

    enum ObjectKind {
        case mutex(owner: ThreadID?)
        case condition
        case semaphore(count: Int)
        case readWrite(readers: Int, writer: ThreadID?)
    }

    struct WaitObject {
        var kind: ObjectKind
        var waiters: [ThreadID] = []
    }

    var threads: [ThreadRecord] = []
    var objects: [WaitObject] = []
    /// Run queues per CPU, by priority (0 lowest); FIFO within each.
    var runQueues: [[[ThreadID]]]
    var timers = DeadlineQueue<ThreadID>()
    /// The running thread of each CPU.
    var runningThreads: [ThreadID?]
    /// CPUs waiting in their idle loop for work (a thread queued for one of
    /// them must wake it).
    var idle: [Bool]
    /// A new earliest deadline that no idle CPU has armed its timer for.
    var deadlineChanged = false
    public private(set) var now: UInt64 = 0
    /// CPUs to wake with an IPI (bit k: CPU k), collected until `takeKicks`.
    public private(set) var kicks: UInt64 = 0
    /// The CPU the next operations act for (its `current` thread).
    public var activeProcessor = 0
    /// Threads the scheduler moved from one CPU's queue to another's.
    public private(set) var steals: UInt64 = 0

    /// A scheduler with `priorityLevels` priorities (0 ... levels − 1,
    /// higher runs first) for `processors` CPUs (1 ... 64).
    public init(priorityLevels: Int = 4, processors: Int = 1) {
        let count = min(max(processors, 1), 64)
        runQueues = Array(repeating: Array(repeating: [], count: max(priorityLevels, 1)), count: count)
        runningThreads = Array(repeating: nil, count: count)
        idle = Array(repeating: true, count: count)
        idle[0] = false
    }

    /// CPUs the scheduler places threads on.
    public var processorCount: Int { runningThreads.count }

    /// The thread running on `activeProcessor`.
    public private(set) var current: ThreadID? {
        get { runningThreads[activeProcessor] }
        set { runningThreads[activeProcessor] = newValue }
    }

    /// The thread running on CPU `processor`.
    public func running(on processor: Int) -> ThreadID? {
        processor >= 0 && processor < runningThreads.count ? runningThreads[processor] : nil
    }

    /// Whether any CPU runs a thread.
    public var anyThreadRunning: Bool { runningThreads.contains { $0 != nil } }

    /// Whether CPU `processor` waits in its idle loop.
    public func isIdle(_ processor: Int) -> Bool { processor >= 0 && processor < idle.count && idle[processor] }

    /// Threads queued on CPU `processor` (not counting its running one).
    public func queuedCount(on processor: Int) -> Int {
        guard processor >= 0, processor < runQueues.count else { return 0 }
        return runQueues[processor].reduce(0) { $0 + $1.count }
    }

    /// The CPU a thread is bound to (nil: unbound).
    public func affinity(of thread: ThreadID) -> Int? {
        thread.rawValue < threads.count ? threads[thread.rawValue].affinity : nil
    }

    /// The CPU a thread last ran on.
    public func lastProcessor(of thread: ThreadID) -> Int? {
        thread.rawValue < threads.count ? threads[thread.rawValue].lastProcessor : nil
    }

    /// The CPUs to wake with an IPI since the last call (bit k: CPU k).
    public mutating func takeKicks() -> UInt64 {
        let taken = kicks
        kicks = 0
        return taken
    }

    /// The active CPU has nothing to run: it waits in its idle loop until
    /// a thread is queued for it (then it is kicked) or its timer fires.
    /// Call under the same lock as the check that found nothing.
    public mutating func enterIdle() {
        idle[activeProcessor] = true
        deadlineChanged = false
    }

    /// The active CPU left its idle loop (kicked, timer, interrupt).
    public mutating func leaveIdle() {
        idle[activeProcessor] = false
    }

    public func state(of thread: ThreadID) -> ThreadState? {
        thread.rawValue < threads.count ? threads[thread.rawValue].state : nil
    }

    /// How the thread's last wait ended.
    public func wakeReason(of thread: ThreadID) -> WakeReason? {
        thread.rawValue < threads.count ? threads[thread.rawValue].wakeReason : nil
    }

    /// The earliest deadline among sleeping and timed waits (for the timer).
    public var nextDeadline: UInt64? { timers.nextDeadline }

    /// Whether any thread can run (on any CPU).
    public var hasRunnableThreads: Bool { runQueues.contains { $0.contains { !$0.isEmpty } } }

    /// Whether the active CPU has a thread to take (its own or one to steal).
    public var hasWorkForActiveProcessor: Bool { highestRunnableLevel() != nil }

    // MARK: Threads

    /// A new runnable thread, bound to CPU `processor` or (nil) unbound.
    /// A CPU index outside 0 ..< processorCount is an error, not guessed at.
    public mutating func createThread(priority: Int = 0, boundTo processor: Int?) throws(SchedulerError) -> ThreadID {
        if let processor, processor < 0 || processor >= processorCount { throw .noSuchProcessor(processor) }
        let id = ThreadID(rawValue: threads.count)
        let level = min(max(priority, 0), levels - 1)
        threads.append(ThreadRecord(state: .runnable, priority: level, affinity: processor, lastProcessor: processor ?? activeProcessor))
        enqueue(id)
        return id
    }

    /// A new runnable unbound thread.
    public mutating func createThread(priority: Int = 0) -> ThreadID {
        let id = ThreadID(rawValue: threads.count)
        let level = min(max(priority, 0), levels - 1)
        threads.append(ThreadRecord(state: .runnable, priority: level, lastProcessor: activeProcessor))
        enqueue(id)
        return id
    }

    var levels: Int { runQueues[0].count }

    /// Picks the thread to run: the first of the highest non-empty run
    /// queue. A still-running current thread keeps the CPU unless a thread
    /// of higher priority is runnable. Nil means idle (halt until the next
    /// deadline or interrupt).
    public mutating func schedule() -> ThreadID? {
        let me = activeProcessor
        if let running = current, threads[running.rawValue].state == .running {
            let priority = threads[running.rawValue].priority
            guard let level = highestRunnableLevel(), level > priority else { return running }
            threads[running.rawValue].state = .runnable
            runQueues[me][priority].append(running)
        }
        guard let next = take() else {
            current = nil
            return nil
        }
        threads[next.rawValue].state = .running
        threads[next.rawValue].lastProcessor = me
        current = next
        idle[me] = false
        if deadlineChanged {
            // This CPU goes on running threads: an idle one must arm its
            // timer for the new earliest deadline.
            deadlineChanged = false
            kickOneIdle()
        }
        return next
    }

    /// The highest priority the active CPU could run now: its own queues,
    /// and unbound threads queued on other CPUs.
    func highestRunnableLevel() -> Int? {
        let me = activeProcessor
        var level = levels - 1
        while level >= 0 {
            if !runQueues[me][level].isEmpty { return level }
            for other in runQueues.indices where other != me {
                if runQueues[other][level].contains(where: { threads[$0.rawValue].affinity == nil }) { return level }
            }
            level -= 1
        }
        return nil
    }

    /// Removes the thread the active CPU runs next: the first of its own
    /// highest non-empty queue, or, when another CPU holds an unbound
    /// thread of a higher priority (or the own queues are empty), the
    /// oldest such thread, looking at the CPUs after this one in turn.
    mutating func take() -> ThreadID? {
        let me = activeProcessor
        var level = levels - 1
        while level >= 0 {
            if !runQueues[me][level].isEmpty { return runQueues[me][level].removeFirst() }
            var offset = 1
            while offset < processorCount {
                let other = (me + offset) % processorCount
                if let index = runQueues[other][level].firstIndex(where: { threads[$0.rawValue].affinity == nil }) {
                    steals &+= 1
                    return runQueues[other][level].remove(at: index)
                }
                offset += 1
            }
            level -= 1
        }
        return nil
    }

    /// Queues a runnable thread: on its bound CPU; an unbound one on the
    /// CPU it last ran on when that CPU is idle, else on the active CPU if
    /// that runs nothing, else on another idle CPU, else on the CPU with
    /// the fewest threads (its last one on a tie). An
    /// idle CPU that receives a thread is kicked (unless it is the active
    /// CPU, whose idle loop looks again by itself).
    mutating func enqueue(_ thread: ThreadID) {
        let target = placement(of: thread)
        runQueues[target][threads[thread.rawValue].priority].append(thread)
        if idle[target] && target != activeProcessor {
            idle[target] = false
            kicks |= 1 << UInt64(target)
        }
    }

    func placement(of thread: ThreadID) -> Int {
        if let bound = threads[thread.rawValue].affinity { return bound }
        let last = threads[thread.rawValue].lastProcessor
        if idle[last] { return last }
        // The active CPU runs nothing and has nothing queued (boot, or an
        // interrupt taken in its idle loop): it looks at its queue next.
        if runningThreads[activeProcessor] == nil && queuedCount(on: activeProcessor) == 0 { return activeProcessor }
        var offset = 1
        while offset < processorCount {
            let other = (last + offset) % processorCount
            if idle[other] { return other }
            offset += 1
        }
        var best = last
        var bestLoad = load(of: last)
        for other in 0..<processorCount where other != last {
            let otherLoad = load(of: other)
            if otherLoad < bestLoad {
                best = other
                bestLoad = otherLoad
            }
        }
        return best
    }

    func load(of processor: Int) -> Int {
        queuedCount(on: processor) + (runningThreads[processor] == nil ? 0 : 1)
    }

    mutating func kickOneIdle() {
        for other in 0..<processorCount where other != activeProcessor && idle[other] {
            idle[other] = false
            kicks |= 1 << UInt64(other)
            return
        }
    }

    /// The current thread goes to the back of its run queue. With no other
    /// runnable thread of the same or a higher priority it keeps running
    /// (and stays `current`): nothing to queue, nothing to switch.
    public mutating func yield() throws(SchedulerError) {
        let thread = try running()
        guard let level = highestRunnableLevel(), level >= threads[thread.rawValue].priority else { return }
        threads[thread.rawValue].state = .runnable
        current = nil
        // An unbound thread that gives way goes to an idle CPU if there is
        // one (and wakes it), else to the back of this CPU's queue.
        if threads[thread.rawValue].affinity == nil,
            let other = (0..<processorCount).first(where: { $0 != activeProcessor && idle[$0] })
        {
            runQueues[other][threads[thread.rawValue].priority].append(thread)
            idle[other] = false
            kicks |= 1 << UInt64(other)
            return
        }
        runQueues[activeProcessor][threads[thread.rawValue].priority].append(thread)
    }

    /// The current thread sleeps until `deadline` (nanoseconds).
    public mutating func sleep(until deadline: UInt64) throws(SchedulerError) {
        let thread = try running()
        block(thread, .sleep, deadline: deadline)
    }

    /// Advances the clock, waking sleepers and timing out waits whose
    /// deadline passed. Returns how many threads became runnable.
    @discardableResult
    public mutating func advanceTime(to time: UInt64) -> Int {
        now = max(now, time)
        var woken = 0
        while let (_, _, thread) = timers.popExpired(now: now) {
            threads[thread.rawValue].timer = nil
            guard case .blocked(let reason, _) = threads[thread.rawValue].state else { continue }
            switch reason {
            case .sleep:
                makeRunnable(thread, .signaled)
            case .condition(let condition), .semaphore(let condition), .mutex(let condition):
                removeWaiter(thread, from: condition)
                if case .condition = reason, let mutex = threads[thread.rawValue].reacquire {
                    threads[thread.rawValue].wakeReason = .timedOut
                    acquireOrQueue(thread, mutex: mutex, reason: .timedOut)
                    woken += threads[thread.rawValue].state == .runnable ? 1 : 0
                    continue
                }
                makeRunnable(thread, .timedOut)
            case .readWrite(let lock):
                removeWaiter(thread, from: lock)
                makeRunnable(thread, .timedOut)
                grantReadWrite(lock)
            case .join, .parked:
                makeRunnable(thread, .timedOut)
            }
            woken += 1
        }
        return woken
    }

    /// Ends the current thread; a joiner waiting for it wakes.
    public mutating func exit(status: Int) throws(SchedulerError) {
        let thread = try running()
        threads[thread.rawValue].state = .exited(status: status)
        current = nil
        if let joiner = threads[thread.rawValue].joiner, case .blocked(.join(thread), _) = threads[joiner.rawValue].state {
            makeRunnable(joiner, .signaled)
        }
    }

    /// Waits for `thread` to exit: its status when it already has (nil
    /// when the current thread blocked; call `exitStatus(of:)` once woken).
    public mutating func join(_ thread: ThreadID) throws(SchedulerError) -> Int? {
        let me = try running()
        guard thread.rawValue < threads.count else { throw .noSuchThread(thread) }
        guard thread != me else { throw .joinSelf }
        guard !threads[thread.rawValue].joined else { throw .alreadyJoined(thread) }
        if case .exited(let status) = threads[thread.rawValue].state {
            threads[thread.rawValue].joined = true
            return status
        }
        threads[thread.rawValue].joiner = me
        block(me, .join(thread), deadline: nil)
        return nil
    }

    /// The exit status of a thread that exited (and marks it joined).
    public mutating func exitStatus(of thread: ThreadID) -> Int? {
        guard thread.rawValue < threads.count, case .exited(let status) = threads[thread.rawValue].state else { return nil }
        threads[thread.rawValue].joined = true
        return status
    }

    // MARK: Mutexes

    public mutating func createMutex() -> WaitObjectID { newObject(.mutex(owner: nil)) }
    public mutating func createCondition() -> WaitObjectID { newObject(.condition) }
    public mutating func createSemaphore(count: Int) -> WaitObjectID { newObject(.semaphore(count: count)) }

    /// The owner of a mutex.
    public func owner(of mutex: WaitObjectID) -> ThreadID? {
        guard mutex.rawValue < objects.count, case .mutex(let owner) = objects[mutex.rawValue].kind else { return nil }
        return owner
    }

    /// Takes the mutex: true when acquired, false when the current thread
    /// blocked (it owns the mutex once it runs again).
    public mutating func lock(_ mutex: WaitObjectID) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .mutex(let owner) = try object(mutex).kind else { throw .wrongObject(mutex) }
        if owner == me { throw .relock(mutex: mutex) }
        acquireOrQueue(me, mutex: mutex, reason: .signaled)
        return owner == nil
    }

    /// Takes the mutex only if it is free.
    public mutating func tryLock(_ mutex: WaitObjectID) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .mutex(let owner) = try object(mutex).kind else { throw .wrongObject(mutex) }
        guard owner == nil else { return false }
        objects[mutex.rawValue].kind = .mutex(owner: me)
        return true
    }

    /// Releases the mutex, handing it to the first waiter (FIFO).
    public mutating func unlock(_ mutex: WaitObjectID) throws(SchedulerError) {
        let me = try running()
        try release(mutex, by: me)
    }

    // MARK: Condition variables

    /// Releases `mutex` and waits on `condition` until signalled or until
    /// `deadline`; the thread owns `mutex` again when it next runs, and
    /// `wakeReason(of:)` says which.
    public mutating func wait(_ condition: WaitObjectID, mutex: WaitObjectID, deadline: UInt64? = nil) throws(SchedulerError) {
        let me = try running()
        guard case .condition = try object(condition).kind else { throw .wrongObject(condition) }
        try release(mutex, by: me)
        threads[me.rawValue].reacquire = mutex
        objects[condition.rawValue].waiters.append(me)
        block(me, .condition(condition), deadline: deadline)
    }

    /// Wakes the first waiter of `condition`, if any.
    public mutating func signal(_ condition: WaitObjectID) throws(SchedulerError) {
        guard case .condition = try object(condition).kind else { throw .wrongObject(condition) }
        guard !objects[condition.rawValue].waiters.isEmpty else { return }
        let waiter = objects[condition.rawValue].waiters.removeFirst()
        wakeFromCondition(waiter)
    }

    /// Wakes every waiter of `condition`.
    public mutating func broadcast(_ condition: WaitObjectID) throws(SchedulerError) {
        guard case .condition = try object(condition).kind else { throw .wrongObject(condition) }
        let waiters = objects[condition.rawValue].waiters
        objects[condition.rawValue].waiters = []
        for waiter in waiters { wakeFromCondition(waiter) }
    }

    // MARK: Semaphores

    /// Takes a unit: true at once, false when the current thread blocked
    /// (it holds the unit once it runs again, or timed out at `deadline`).
    public mutating func down(_ semaphore: WaitObjectID, deadline: UInt64? = nil) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .semaphore(let count) = try object(semaphore).kind else { throw .wrongObject(semaphore) }
        if count > 0 {
            objects[semaphore.rawValue].kind = .semaphore(count: count - 1)
            return true
        }
        objects[semaphore.rawValue].waiters.append(me)
        block(me, .semaphore(semaphore), deadline: deadline)
        return false
    }

    /// Returns a unit, handing it straight to the first waiter.
    public mutating func up(_ semaphore: WaitObjectID) throws(SchedulerError) {
        guard case .semaphore(let count) = try object(semaphore).kind else { throw .wrongObject(semaphore) }
        if objects[semaphore.rawValue].waiters.isEmpty {
            objects[semaphore.rawValue].kind = .semaphore(count: count + 1)
        } else {
            let waiter = objects[semaphore.rawValue].waiters.removeFirst()
            makeRunnable(waiter, .signaled)
        }
    }

    public func count(of semaphore: WaitObjectID) -> Int? {
        guard semaphore.rawValue < objects.count, case .semaphore(let count) = objects[semaphore.rawValue].kind else { return nil }
        return count
    }

    // MARK: Read-write locks

    public mutating func createReadWriteLock() -> WaitObjectID { newObject(.readWrite(readers: 0, writer: nil)) }

    /// Enters the lock to read (shared) or write (exclusive): true when
    /// entered, false when the current thread blocked (it holds the lock
    /// once it runs again). FIFO: a queued writer holds back later readers.
    public mutating func enter(_ lock: WaitObjectID, write: Bool) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .readWrite(let readers, let writer) = try object(lock).kind else { throw .wrongObject(lock) }
        if writer == me { throw .relock(mutex: lock) }
        if objects[lock.rawValue].waiters.isEmpty, writer == nil, !write || readers == 0 {
            objects[lock.rawValue].kind = .readWrite(readers: write ? 0 : readers + 1, writer: write ? me : nil)
            return true
        }
        threads[me.rawValue].wantsWrite = write
        objects[lock.rawValue].waiters.append(me)
        block(me, .readWrite(lock), deadline: nil)
        return false
    }

    /// Enters the lock only if that needs no waiting.
    public mutating func tryEnter(_ lock: WaitObjectID, write: Bool) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .readWrite(let readers, let writer) = try object(lock).kind else { throw .wrongObject(lock) }
        guard objects[lock.rawValue].waiters.isEmpty, writer == nil, !write || readers == 0 else { return false }
        objects[lock.rawValue].kind = .readWrite(readers: write ? 0 : readers + 1, writer: write ? me : nil)
        return true
    }

    /// Leaves the lock (the writer, or one of the readers) and hands it on:
    /// to the first queued writer, or to every reader queued before one.
    public mutating func exit(_ lock: WaitObjectID) throws(SchedulerError) {
        let me = try running()
        guard case .readWrite(let readers, let writer) = try object(lock).kind else { throw .wrongObject(lock) }
        if let writer {
            guard writer == me else { throw .notOwner(mutex: lock, thread: me) }
            objects[lock.rawValue].kind = .readWrite(readers: 0, writer: nil)
        } else {
            guard readers > 0 else { throw .notHeld(lock: lock) }
            objects[lock.rawValue].kind = .readWrite(readers: readers - 1, writer: nil)
        }
        grantReadWrite(lock)
    }

    /// The writer becomes a reader (queued readers may join it).
    public mutating func downgrade(_ lock: WaitObjectID) throws(SchedulerError) {
        let me = try running()
        guard case .readWrite(_, let writer) = try object(lock).kind else { throw .wrongObject(lock) }
        guard writer == me else { throw .notOwner(mutex: lock, thread: me) }
        objects[lock.rawValue].kind = .readWrite(readers: 1, writer: nil)
        grantReadWrite(lock)
    }

    /// A sole reader becomes the writer; false if other readers hold it.
    public mutating func tryUpgrade(_ lock: WaitObjectID) throws(SchedulerError) -> Bool {
        let me = try running()
        guard case .readWrite(let readers, let writer) = try object(lock).kind else { throw .wrongObject(lock) }
        guard writer == nil, readers > 0 else { throw .notHeld(lock: lock) }
        guard readers == 1 else { return false }
        objects[lock.rawValue].kind = .readWrite(readers: 0, writer: me)
        return true
    }

    /// Readers inside and the writer of a read-write lock.
    public func holders(of lock: WaitObjectID) -> (readers: Int, writer: ThreadID?)? {
        guard lock.rawValue < objects.count, case .readWrite(let readers, let writer) = objects[lock.rawValue].kind else { return nil }
        return (readers, writer)
    }

    mutating func grantReadWrite(_ lock: WaitObjectID) {
        while case .readWrite(let readers, let writer) = objects[lock.rawValue].kind, writer == nil,
            let next = objects[lock.rawValue].waiters.first
        {
            if threads[next.rawValue].wantsWrite {
                guard readers == 0 else { return }
                objects[lock.rawValue].waiters.removeFirst()
                objects[lock.rawValue].kind = .readWrite(readers: 0, writer: next)
                makeRunnable(next, .signaled)
                return
            }
            objects[lock.rawValue].waiters.removeFirst()
            objects[lock.rawValue].kind = .readWrite(readers: readers + 1, writer: nil)
            makeRunnable(next, .signaled)
        }
    }

    // MARK: Block and wake, wait queues

    /// Parks the current thread until `unpark` or `deadline`. Returns false
    /// when a wake was already pending (the thread keeps running).
    public mutating func park(deadline: UInt64? = nil) throws(SchedulerError) -> Bool {
        let me = try running()
        if threads[me.rawValue].wakePending {
            threads[me.rawValue].wakePending = false
            threads[me.rawValue].wakeReason = .signaled
            return false
        }
        block(me, .parked, deadline: deadline)
        return true
    }

    /// Wakes a parked thread; for a thread not parked (running, runnable,
    /// or waiting for something else) the wake stays pending until its next
    /// `park`. Safe to call from an interrupt handler (with the scheduler's
    /// state protected by disabled interrupts). False for unknown or exited threads.
    @discardableResult
    public mutating func unpark(_ thread: ThreadID) -> Bool {
        guard thread.rawValue >= 0, thread.rawValue < threads.count else { return false }
        switch threads[thread.rawValue].state {
        case .blocked(.parked, _):
            makeRunnable(thread, .signaled)
        case .exited:
            return false
        default:
            threads[thread.rawValue].wakePending = true
        }
        return true
    }

    /// Waits on a wait queue (a condition object used without a mutex)
    /// until `signal`/`broadcast` or `deadline`.
    public mutating func wait(_ queue: WaitObjectID, deadline: UInt64? = nil) throws(SchedulerError) {
        let me = try running()
        guard case .condition = try object(queue).kind else { throw .wrongObject(queue) }
        threads[me.rawValue].reacquire = nil
        objects[queue.rawValue].waiters.append(me)
        block(me, .condition(queue), deadline: deadline)
    }

    /// The priority a thread was created with.
    public func priority(of thread: ThreadID) -> Int? {
        thread.rawValue < threads.count ? threads[thread.rawValue].priority : nil
    }

    // MARK: Internals

    func running() throws(SchedulerError) -> ThreadID {
        guard let current, threads[current.rawValue].state == .running else { throw .noCurrentThread }
        return current
    }

    func object(_ id: WaitObjectID) throws(SchedulerError) -> WaitObject {
        guard id.rawValue >= 0, id.rawValue < objects.count else { throw .wrongObject(id) }
        return objects[id.rawValue]
    }

    mutating func newObject(_ kind: ObjectKind) -> WaitObjectID {
        objects.append(WaitObject(kind: kind))
        return WaitObjectID(rawValue: objects.count - 1)
    }

    mutating func block(_ thread: ThreadID, _ reason: BlockReason, deadline: UInt64?) {
        threads[thread.rawValue].state = .blocked(reason, deadline: deadline)
        if let deadline {
            let isEarliest = timers.nextDeadline.map { deadline < $0 } ?? true
            if isEarliest && processorCount > 1 { deadlineChanged = true }
            threads[thread.rawValue].timer = timers.schedule(thread, at: deadline)
        }
        if current == thread { current = nil }
    }

    mutating func makeRunnable(_ thread: ThreadID, _ reason: WakeReason) {
        if let timer = threads[thread.rawValue].timer {
            timers.cancel(timer)
            threads[thread.rawValue].timer = nil
        }
        threads[thread.rawValue].state = .runnable
        threads[thread.rawValue].wakeReason = reason
        enqueue(thread)
    }

    mutating func removeWaiter(_ thread: ThreadID, from object: WaitObjectID) {
        objects[object.rawValue].waiters.removeAll { $0 == thread }
    }

    /// Gives `mutex` to `thread` if free (runnable if it was blocked), else
    /// queues it on the mutex.
    mutating func acquireOrQueue(_ thread: ThreadID, mutex: WaitObjectID, reason: WakeReason) {
        guard case .mutex(let owner) = objects[mutex.rawValue].kind else { return }
        threads[thread.rawValue].reacquire = nil
        if owner == nil {
            objects[mutex.rawValue].kind = .mutex(owner: thread)
            if case .blocked = threads[thread.rawValue].state { makeRunnable(thread, reason) }
        } else {
            objects[mutex.rawValue].waiters.append(thread)
            if let timer = threads[thread.rawValue].timer {
                timers.cancel(timer)
                threads[thread.rawValue].timer = nil
            }
            threads[thread.rawValue].wakeReason = reason
            threads[thread.rawValue].state = .blocked(.mutex(mutex), deadline: nil)
            if current == thread { current = nil }
        }
    }

    mutating func wakeFromCondition(_ waiter: ThreadID) {
        guard let mutex = threads[waiter.rawValue].reacquire else {
            makeRunnable(waiter, .signaled)
            return
        }
        if let timer = threads[waiter.rawValue].timer {
            timers.cancel(timer)
            threads[waiter.rawValue].timer = nil
        }
        acquireOrQueue(waiter, mutex: mutex, reason: .signaled)
    }

    mutating func release(_ mutex: WaitObjectID, by thread: ThreadID) throws(SchedulerError) {
        guard case .mutex(let owner) = try object(mutex).kind else { throw .wrongObject(mutex) }
        guard owner == thread else { throw .notOwner(mutex: mutex, thread: thread) }
        if objects[mutex.rawValue].waiters.isEmpty {
            objects[mutex.rawValue].kind = .mutex(owner: nil)
        } else {
            let next = objects[mutex.rawValue].waiters.removeFirst()
            objects[mutex.rawValue].kind = .mutex(owner: next)
            makeRunnable(next, threads[next.rawValue].wakeReason)
        }
    }
}
