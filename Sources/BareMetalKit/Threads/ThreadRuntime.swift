// ThreadRuntime: guest threads of the hw platform on top of the Scheduler
// model: guarded stacks, the context switch (switch.S), TLS blocks through
// the FS base (x86-64 ELF TLS variant II: the block ends at the thread
// pointer, and FS:0 holds the thread pointer itself; "ELF Handling For
// Thread-Local Storage" §3.4.6), the idle loop of every CPU, and the thread
// that runs the application's main.
//
// Several CPUs: one Scheduler instance under one ticket lock (`lock`),
// always taken with interrupts masked, so an interrupt handler may wake a
// thread (it can never find its own CPU holding the lock). The lock is held
// across a context switch and released by the thread switched to (or the
// idle loop), so no CPU can pick a thread whose stack another CPU is still
// leaving. Each CPU has an idle loop on its own stack (the boot stack on
// CPU 0, the AP's start-up stack elsewhere): a CPU with nothing to run
// switches there, marks itself idle under the lock, drops the lock and
// halts with STI;HLT; a CPU that queues a thread for an idle CPU sends it
// the wake-up IPI, which the halt's interrupt shadow cannot lose.
#if hasFeature(Embedded)
import CPUPrimitives

/// One thread's machine state (stack, saved RSP, TLS) and its body.
public final class ThreadControl {
    public let id: ThreadID
    /// The name given at creation (UTF-8).
    public let name: [UInt8]
    /// Where bmk_context_switch stores RSP (a stable address).
    let context: UnsafeMutablePointer<UInt64>
    /// Lowest address of the stack run: the unmapped guard page.
    public let guardPage: UInt64
    let stackTop: UInt64
    /// TLS block (heap) and the thread pointer loaded into FS base.
    let tlsBlock: UnsafeMutableRawPointer?
    let threadPointer: UInt64
    var body: (() -> Int)?
    var detached = false
    /// The CPU the thread is bound to (nil: it runs on any CPU).
    public let processor: Int?

    init(
        id: ThreadID, name: [UInt8], guardPage: UInt64, stackTop: UInt64, tlsBlock: UnsafeMutableRawPointer?, threadPointer: UInt64,
        processor: Int?, body: (() -> Int)?
    ) {
        self.id = id
        self.name = name
        self.context = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        self.context.pointee = 0
        self.guardPage = guardPage
        self.stackTop = stackTop
        self.tlsBlock = tlsBlock
        self.threadPointer = threadPointer
        self.processor = processor
        self.body = body
    }

    /// Bytes of stack between the guard page and the top.
    public var stackSize: UInt64 { stackTop - guardPage - PageSize.small }
}

/// What a thread operation can report to its caller.
public enum ThreadError: Error {
    case outOfMemory(what: StaticString)
    case noSuchThread
    case alreadyJoined
    case joinSelf
    /// A thread bound to a CPU that threads cannot run on.
    case noSuchProcessor(Int)
}

/// One CPU's view: the thread it runs and its idle loop's saved stack.
struct ProcessorState {
    var current: ThreadControl? = nil
    /// Interrupt flags of the critical section that switched away from the
    /// last thread; a new thread started on the boot CPU restores them.
    var switchFlags: UInt64 = 0
    /// Where the idle loop's RSP is kept while a thread runs.
    var idleContext: UnsafeMutablePointer<UInt64>? = nil
    /// Times the idle loop found nothing and halted.
    var idleWaits: UInt64 = 0
}

public enum ThreadRuntime {
    nonisolated(unsafe) static var scheduler = Scheduler(priorityLevels: 4)
    /// The scheduler lock: over `scheduler`, `threads`, `pendingRelease`
    /// and the per-CPU states' `current`.
    static let lock = TicketLock()
    nonisolated(unsafe) static var threads: [ThreadControl?] = []
    /// One state per CPU threads run on (nil before `runMain`).
    nonisolated(unsafe) static var processors: UnsafeMutablePointer<ProcessorState>? = nil
    nonisolated(unsafe) static var processorCount = 1
    /// Detached threads that exited; freed by the next thread to run.
    nonisolated(unsafe) static var pendingRelease: [ThreadControl] = []
    nonisolated(unsafe) static var useFSGSBaseInstructions = false
    nonisolated(unsafe) static var tlsLayout = TLSLayout(imageStart: 0, fileSize: 0, memorySize: 0)
    nonisolated(unsafe) static var switchCount: UInt64 = 0
    /// Set once every CPU's state exists; APs then enter the idle loop.
    nonisolated(unsafe) static var isRunning = false

    /// The default priority (of 0 ... 3) and stack size of new threads.
    public static var normalPriority: Int { 1 }
    public static var defaultStackSize: Int { 64 * 1024 }
    /// main() gets a larger stack than other threads.
    public static var mainStackSize: Int { 256 * 1024 }

    static var processorIndex: Int { Processors.currentIndex }

    /// The running thread (nil before `runMain` and in work posted to an AP's mailbox).
    public static var current: ThreadControl? {
        guard let processors else { return nil }
        let index = processorIndex
        return index < processorCount ? processors[index].current : nil
    }

    /// CPUs threads run on.
    public static var processorsForThreads: Int { processorCount }

    /// Context switches so far (statistics for benchmarks).
    public static var contextSwitches: UInt64 { switchCount }

    /// Unbound threads a CPU took from another CPU's queue.
    public static var steals: UInt64 {
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        return scheduler.steals
    }

    /// Times CPU `index`'s idle loop halted for lack of work.
    public static func idleWaits(on index: Int) -> UInt64 {
        guard let processors, index >= 0, index < processorCount else { return 0 }
        return volatileLoad(&processors[index].idleWaits)
    }

    // MARK: The scheduler lock

    /// Masks interrupts, takes the scheduler lock and makes the running
    /// CPU the scheduler's active one. Returns the caller's flags. Every
    /// scheduler operation is also a point where a TLB shootdown aimed at
    /// this CPU is answered: threads on the boot CPU run with interrupts
    /// off, and a thread that only yields must not hold up an unmap.
    @inline(__always)
    static func lockScheduler() -> UInt64 {
        let flags = cpu_save_and_disable_interrupts()
        TLBShootdown.answerPending()
        _ = lock.lock()
        scheduler.activeProcessor = processorIndex
        return flags
    }

    /// Wakes the idle CPUs the operation queued work for, drops the lock
    /// and restores `flags`.
    @inline(__always)
    static func unlockScheduler(_ flags: UInt64) {
        let kicks = scheduler.takeKicks()
        lock.unlock(restoring: false)
        sendWakeUps(kicks)
        cpu_restore_interrupts(flags)
    }

    /// Runs `body` on the scheduler under its lock.
    @inline(__always)
    static func withScheduler<Result>(_ body: (inout Scheduler) -> Result) -> Result {
        let flags = lockScheduler()
        let result = body(&scheduler)
        unlockScheduler(flags)
        return result
    }

    /// The wake-up IPI to every CPU in `mask` (interrupts masked by the caller).
    static func sendWakeUps(_ mask: UInt64) {
        var rest = mask
        while rest != 0 {
            let index = rest.trailingZeroBitCount
            rest &= rest &- 1
            if let apicID = Processors.apicID(of: index) {
                bmk_signal_processor(0, apicID)  // the wake-up IPI (PrivilegedOperations.h)
            }
        }
    }

    // MARK: Start

    /// Calibrates the clocks, prepares TLS and FS base handling, gives every
    /// online CPU a scheduler state, and runs the application's `main` on a
    /// thread with a guarded stack; the guest exits with main's status when
    /// it returns. The boot stack becomes CPU 0's idle loop. Called once by
    /// the boot path, after the APs started.
    public static func runMain() -> Never {
        bmk_clock_start()  // hw: SystemClock.start (PrivilegedOperations.h)
        let cpu = CPUInformation(source: HardwareCPUID())
        if cpu.has(.fsgsbase) && bmk_enable_fs_base_instructions() != 0 {  // CR4.FSGSBASE (PrivilegedOperations.h)
            useFSGSBaseInstructions = true
        }
        tlsLayout = TLSLayout(
            imageStart: UInt64(bmk_tls_image_start()),
            fileSize: UInt64(bmk_tls_image_end() - bmk_tls_image_start()),
            memorySize: UInt64(bmk_tls_segment_end() - bmk_tls_image_start()))
        let count = max(Processors.count, 1)
        let states = UnsafeMutablePointer<ProcessorState>.allocate(capacity: count)
        states.initialize(repeating: ProcessorState(), count: count)
        for index in 0..<count {
            states[index].idleContext = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
            states[index].idleContext!.pointee = 0
        }
        let flags = cpu_save_and_disable_interrupts()
        _ = lock.lock()
        ConsoleLines.start(processors: count)
        scheduler = Scheduler(priorityLevels: 4, processors: count)
        processorCount = count
        processors = states
        let main: ThreadControl
        do throws(ThreadError) {
            main = try makeThread(name: Array("main".utf8), priority: normalPriority, stackSize: mainStackSize, processor: nil) {
                bmk_xen_start_devices()  // Xen PVH: event upcall, xenbus devices (XenPVKit; no-op elsewhere)
                let status = bmk_call_main()
                Platform.exit(status)
            }
        } catch {
            Platform.panic("threads: cannot allocate main's stack and TLS block")
        }
        scheduler.activeProcessor = 0
        guard scheduler.schedule() == main.id else { Platform.panic("threads: main is not the first thread") }
        states[0].current = main
        states[0].switchFlags = flags
        loadThreadPointer(main.threadPointer)
        cpu_memory_barrier()
        isRunning = true
        // The boot stack's RSP goes to CPU 0's idle word: when no thread
        // can run, the switch returns here and the boot stack idles.
        bmk_context_switch(states[0].idleContext!, main.context.pointee)
        idleLoop()
    }

    /// An AP's entry into the scheduler (from its start-up loop, once
    /// `isRunning`): sets up what threads need on this CPU and idles.
    static func enterOnApplicationProcessor() -> Never {
        if useFSGSBaseInstructions { _ = bmk_enable_fs_base_instructions() }
        cpu_disable_interrupts()
        _ = lock.lock()
        idleLoop()
    }

    // MARK: Creation, exit, join

    /// Creates a runnable thread running `body`; its return value is what
    /// `join` returns. `stackSize` is rounded up to whole pages (at least
    /// 4). `processor` binds it to that CPU (nil: any CPU).
    public static func spawn(
        name: [UInt8], priority: Int = normalPriority, stackSize: Int = defaultStackSize, processor: Int? = nil,
        body: @escaping () -> Int
    ) throws(ThreadError) -> ThreadControl {
        if let processor, processor < 0 || processor >= processorCount { throw .noSuchProcessor(processor) }
        let (top, guardPage, block, threadPointer) = try allocateThreadMemory(stackSize: stackSize)
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        return register(name: name, priority: priority, processor: processor, body: body,
                        top: top, guardPage: guardPage, block: block, threadPointer: threadPointer)
    }

    /// Stack and TLS block of a new thread (no scheduler lock needed).
    static func allocateThreadMemory(stackSize: Int) throws(ThreadError) -> (UInt64, UInt64, UnsafeMutableRawPointer?, UInt64) {
        let pages = max(UInt64((stackSize + 4095) / 4096), 4)
        // PrivilegedOperations.h: the hw platform maps the guard page out of
        // its own page tables (bmk_hw_stack_allocate below).
        let top = bmk_stack_allocate(pages)
        guard top != 0 else { throw .outOfMemory(what: "stack") }
        let guardPage = top - (pages + 1) * PageSize.small
        let (block, threadPointer) = tlsLayout.makeBlock()
        if tlsLayout.memorySize > 0 && block == nil {
            releaseStack(guardPage: guardPage)
            throw .outOfMemory(what: "TLS block")
        }
        return (top, guardPage, block, threadPointer)
    }

    static func makeThread(name: [UInt8], priority: Int, stackSize: Int, processor: Int?, body: @escaping () -> Int) throws(ThreadError) -> ThreadControl {
        let (top, guardPage, block, threadPointer) = try allocateThreadMemory(stackSize: stackSize)
        return register(name: name, priority: priority, processor: processor, body: body,
                        top: top, guardPage: guardPage, block: block, threadPointer: threadPointer)
    }

    /// Makes the thread known to the scheduler (under its lock).
    static func register(
        name: [UInt8], priority: Int, processor: Int?, body: @escaping () -> Int,
        top: UInt64, guardPage: UInt64, block: UnsafeMutableRawPointer?, threadPointer: UInt64
    ) -> ThreadControl {
        // The thread's record must exist before the scheduler can hand it
        // to another CPU, so it is created first and queued by the scheduler.
        let id = ThreadID(rawValue: scheduler.threads.count)
        let thread = ThreadControl(
            id: id, name: name, guardPage: guardPage, stackTop: top, tlsBlock: block, threadPointer: threadPointer,
            processor: processor, body: body)
        // The frame bmk_context_switch pops (see switch.S), from the top:
        // padding, return address, rbp, rbx, r12 (argument), r13, r14, r15, MXCSR|FCW.
        let frame = UnsafeMutablePointer<UInt64>(bitPattern: UInt(top - 72))!
        frame[0] = 0x1F80 | (0x037F << 32)
        frame[1] = 0  // r15
        frame[2] = 0  // r14
        frame[3] = 0  // r13
        frame[4] = UInt64(id.rawValue)  // r12: bmk_thread_entry's argument
        frame[5] = 0  // rbx
        frame[6] = 0  // rbp
        frame[7] = bmk_thread_trampoline_address()
        frame[8] = 0
        thread.context.pointee = top - 72
        while threads.count <= id.rawValue { threads.append(nil) }
        threads[id.rawValue] = thread
        let created: ThreadID
        if let processor {
            do throws(SchedulerError) {
                created = try scheduler.createThread(priority: priority, boundTo: processor)
            } catch {
                Platform.panic("threads: a thread bound to a CPU the scheduler does not have")
            }
        } else {
            created = scheduler.createThread(priority: priority)
        }
        if created != id { Platform.panic("threads: thread ids out of step") }
        return thread
    }

    /// Ends the calling thread; `join` returns `status`.
    public static func exit(_ status: Int) -> Never {
        let flags = lockScheduler()
        guard let me = current else { Platform.panic("threads: exit outside a thread") }
        me.body = nil
        check { () throws(SchedulerError) in try scheduler.exit(status: status) }
        if me.detached { pendingRelease.append(me) }
        reschedule(flags: flags)
        Platform.panic("threads: an exited thread was resumed")
    }

    /// Waits for `thread` to end and returns its status; frees its stack.
    public static func join(_ thread: ThreadControl) throws(ThreadError) -> Int {
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        var status: Int? = nil
        do throws(SchedulerError) {
            status = try scheduler.join(thread.id)
        } catch {
            switch error {
            case .joinSelf: throw .joinSelf
            case .alreadyJoined: throw .alreadyJoined
            default: throw .noSuchThread
            }
        }
        if status == nil {
            reschedule(flags: flags)
            status = scheduler.exitStatus(of: thread.id)
        }
        release(thread)
        return status ?? 0
    }

    /// Lets `thread` end without a join (its resources go when it exits).
    public static func detach(_ thread: ThreadControl) {
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        if case .exited = scheduler.state(of: thread.id) {
            if scheduler.exitStatus(of: thread.id) != nil { release(thread) }
        } else {
            thread.detached = true
        }
    }

    // MARK: Yield, sleep, block and wake

    /// Lets every other runnable thread of the same or higher priority run.
    public static func yield() {
        let flags = lockScheduler()
        check { () throws(SchedulerError) in try scheduler.yield() }
        reschedule(flags: flags)
        unlockScheduler(flags)
    }

    /// Sleeps until the monotonic clock reaches `deadline` (ns); never early.
    public static func sleep(until deadline: UInt64) {
        let flags = lockScheduler()
        check { () throws(SchedulerError) in try scheduler.sleep(until: deadline) }
        reschedule(flags: flags)
        unlockScheduler(flags)
    }

    /// Blocks the calling thread until `wake` (or `deadline`, monotonic ns).
    /// Returns how it ended; a wake that came before the block counts.
    @discardableResult
    public static func block(deadline: UInt64? = nil) -> WakeReason {
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        var parked = false
        check { () throws(SchedulerError) in parked = try scheduler.park(deadline: deadline) }
        guard parked else { return .signaled }
        reschedule(flags: flags)
        return currentWakeReason
    }

    /// Makes a blocked thread runnable (or leaves a pending wake for its
    /// next `block`). Safe from interrupt handlers and from any CPU; never
    /// switches threads (an idle CPU the thread is queued on gets an IPI).
    @discardableResult
    public static func wake(_ thread: ThreadID) -> Bool {
        let flags = lockScheduler()
        defer { unlockScheduler(flags) }
        return scheduler.unpark(thread)
    }

    /// Under the scheduler lock, after a wait.
    static var currentWakeReason: WakeReason {
        guard let me = current else { return .signaled }
        return scheduler.wakeReason(of: me.id) ?? .signaled
    }

    // MARK: Switching

    /// Picks the next thread for this CPU and switches to it, or to the
    /// CPU's idle loop when nothing can run (returns at once when the
    /// caller keeps running). Called holding the scheduler lock with
    /// interrupts masked; returns holding it, on whichever CPU the thread
    /// runs again. `flags` are the caller's saved flags.
    static func reschedule(flags: UInt64) {
        let processor = processorIndex
        let state = processors! + processor
        guard let me = state.pointee.current else { Platform.panic("threads: reschedule without a thread") }
        scheduler.activeProcessor = processor
        scheduler.advanceTime(to: SystemClock.monotonicNanoseconds)
        let next = scheduler.schedule()
        if next == me.id { return }
        ConsoleLines.flushCurrentProcessor()
        state.pointee.switchFlags = flags
        sendWakeUps(scheduler.takeKicks())
        if let next {
            guard let target = threads[next.rawValue] else { Platform.panic("threads: scheduled a released thread") }
            state.pointee.current = target
            switchCount &+= 1
            loadThreadPointer(target.threadPointer)
            bmk_context_switch(me.context, target.context.pointee)
        } else {
            state.pointee.current = nil
            bmk_context_switch(me.context, state.pointee.idleContext!.pointee)
        }
        afterSwitch()
        scheduler.activeProcessor = processorIndex
    }

    /// The CPU's idle loop, on the CPU's own stack, entered holding the
    /// scheduler lock with interrupts masked: runs the threads the
    /// scheduler gives this CPU, and waits in ProcessorIdle (lock dropped)
    /// when there are none. APs also run work posted to their mailbox.
    static func idleLoop() -> Never {
        let processor = processorIndex
        let state = processors! + processor
        while true {
            afterSwitch()
            scheduler.activeProcessor = processor
            scheduler.advanceTime(to: SystemClock.monotonicNanoseconds)
            if let next = scheduler.schedule() {
                guard let target = threads[next.rawValue] else { Platform.panic("threads: scheduled a released thread") }
                state.pointee.current = target
                switchCount &+= 1
                sendWakeUps(scheduler.takeKicks())
                loadThreadPointer(target.threadPointer)
                bmk_context_switch(state.pointee.idleContext!, target.context.pointee)
                continue
            }
            let deadline = scheduler.nextDeadline
            if deadline == nil && state.pointee.switchFlags & (1 << 9) == 0 && nothingElseCanWake(processor) {
                Platform.panic("threads: deadlock: every thread is blocked, no timer is pending and interrupts are off")
            }
            scheduler.enterIdle()
            let kicks = scheduler.takeKicks()
            lock.unlock(restoring: false)
            sendWakeUps(kicks)
            // Interrupts stay masked from the check above to the STI;HLT
            // in ProcessorIdle: a wake-up IPI sent meanwhile ends the halt.
            if processor == 0 || !Processors.runPostedWork(on: processor) {
                volatileStore(&state.pointee.idleWaits, state.pointee.idleWaits &+ 1)
                ProcessorIdle.wait(untilTSC: deadline.map { SystemClock.tsc(atMonotonic: $0) })
            }
            cpu_disable_interrupts()
            _ = lock.lock()
            scheduler.activeProcessor = processor
            scheduler.leaveIdle()
        }
    }

    /// No thread runs or can run anywhere and every other CPU is idle with
    /// an empty mailbox (under the lock).
    static func nothingElseCanWake(_ processor: Int) -> Bool {
        if scheduler.hasRunnableThreads || scheduler.anyThreadRunning { return false }
        for other in 0..<processorCount where other != processor {
            if !scheduler.isIdle(other) || Processors.hasPostedWork(on: other) { return false }
        }
        return true
    }

    /// First thing a thread (or an idle loop) does after a switch to it,
    /// still holding the scheduler lock: frees detached threads that exited.
    static func afterSwitch() {
        guard !pendingRelease.isEmpty else { return }
        let me = current
        var index = 0
        while index < pendingRelease.count {
            let done = pendingRelease[index]
            if done !== me {
                pendingRelease.remove(at: index)
                _ = scheduler.exitStatus(of: done.id)
                release(done)
            } else {
                index += 1
            }
        }
    }

    static func loadThreadPointer(_ value: UInt64) {
        if useFSGSBaseInstructions {
            cpu_write_fs_base(value)
        } else {
            cpu_write_fs_base_msr(value)
        }
    }

    /// Frees an exited thread's stack (guard page mapped again) and TLS.
    static func release(_ thread: ThreadControl) {
        releaseStack(guardPage: thread.guardPage)
        if let block = thread.tlsBlock {
            do throws(SizeClassHeapError) {
                try MemoryLock.withLock { () throws(SizeClassHeapError) in try Platform.heap?.free(block) }
            } catch {
                Platform.panic("threads: TLS block not from the heap")
            }
        }
        thread.context.deallocate()
        threads[thread.id.rawValue] = nil
    }

    static func releaseStack(guardPage: UInt64) {
        bmk_stack_release(guardPage)  // PrivilegedOperations.h
    }

    static func releaseStackLocked(guardPage: UInt64) {
        do throws(PageTableError) {
            try Platform.pageTables!.map(
                VirtualAddress(guardPage), to: PhysicalAddress(guardPage), attributes: .data, allocator: &Platform.heap!.pages.allocator)
        } catch {
            Platform.panic("threads: cannot map a stack's guard page again")
        }
        cpu_invalidate_page(guardPage)
        do throws(PageAllocatorError) {
            try Platform.heap!.pages.allocator.free(PhysicalAddress(guardPage))
        } catch {
            Platform.panic("threads: a stack was not a page-allocator run")
        }
    }

    /// Runs a scheduler operation; misuse of the API is a bug in the caller.
    static func check(_ operation: () throws(SchedulerError) -> Void) {
        do throws(SchedulerError) {
            try operation()
        } catch {
            switch error {
            case .notOwner: Platform.panic("threads: unlock of a lock the thread does not hold")
            case .relock: Platform.panic("threads: a thread locked a mutex or write lock it already holds")
            case .notHeld: Platform.panic("threads: a read-write lock was left but not held")
            case .wrongObject: Platform.panic("threads: a synchronisation object of the wrong kind")
            case .noCurrentThread: Platform.panic("threads: operation outside a running thread")
            case .noSuchThread: Platform.panic("threads: no such thread")
            case .joinSelf: Platform.panic("threads: a thread joined itself")
            case .alreadyJoined: Platform.panic("threads: a thread was joined twice")
            case .noSuchProcessor: Platform.panic("threads: no such CPU")
            }
        }
    }
}

/// The hw side of PrivilegedOperations.h's bmk_stack_allocate: frames from
/// the page allocator, the lowest one unmapped from the kernel page tables.
@_cdecl("bmk_hw_stack_allocate")
public func hwStackAllocate(_ pages: UInt64) -> UInt64 {
    guard Platform.pageTables != nil, Platform.heap != nil else { return 0 }
    do throws(PlatformCoreError) {
        return try MemoryLock.withLock { () throws(PlatformCoreError) in
            try PlatformCore.allocateStack(pages: pages, mapper: &Platform.pageTables!, allocator: &Platform.heap!.pages.allocator)
        }
    } catch {
        return 0
    }
}

/// The hw side of bmk_stack_release: the guard page mapped again, the run freed.
@_cdecl("bmk_hw_stack_release")
public func hwStackRelease(_ guardPage: UInt64) {
    MemoryLock.withLock { ThreadRuntime.releaseStackLocked(guardPage: guardPage) }
}

/// Layout of the PT_TLS segment and the per-thread blocks made from it.
struct TLSLayout {
    var imageStart: UInt64
    var fileSize: UInt64
    var memorySize: UInt64
    /// The linker script aligns .tdata/.tbss to 64, so the segment's
    /// alignment, and the thread pointer's, is 64.
    static var alignment: UInt64 { 64 }

    /// Bytes from the block's start to the thread pointer.
    var offsetToThreadPointer: UInt64 { (memorySize + Self.alignment - 1) & ~(Self.alignment - 1) }

    /// A new block: .tdata copied, .tbss zeroed, and the TCB word at the
    /// thread pointer pointing to itself. Returns (block, thread pointer).
    func makeBlock() -> (UnsafeMutableRawPointer?, UInt64) {
        let total = Int(offsetToThreadPointer) + 64
        guard let block = MemoryLock.withLock({ Platform.heap?.allocate(size: total, alignment: Int(Self.alignment)) }) else {
            return (nil, 0)
        }
        block.initializeMemory(as: UInt8.self, repeating: 0, count: total)
        if fileSize > 0 {
            block.copyMemory(from: UnsafeRawPointer(bitPattern: UInt(imageStart))!, byteCount: Int(fileSize))
        }
        let threadPointer = UInt64(UInt(bitPattern: block)) + offsetToThreadPointer
        (block + Int(offsetToThreadPointer)).storeBytes(of: threadPointer, as: UInt64.self)
        return (block, threadPointer)
    }
}

/// First Swift code of every thread (from bmk_thread_trampoline, on the
/// thread's own stack, interrupts masked and the scheduler lock held by
/// the switch). A thread first started on the boot CPU restores the flags
/// of the section that switched away from the previous thread, as on one
/// CPU; on an AP it runs with interrupts enabled (only IPIs arrive there),
/// so it answers TLB shootdowns and wake-ups while it computes.
@_cdecl("bmk_thread_entry")
public func threadEntry(_ argument: UInt64) -> Never {
    let processor = ThreadRuntime.processorIndex
    ThreadRuntime.afterSwitch()
    let flags = processor == 0 ? ThreadRuntime.processors![0].switchFlags : UInt64(1 << 9)
    guard let me = ThreadRuntime.threads[Int(argument)], let body = me.body else {
        Platform.panic("threads: a thread started without a body")
    }
    ThreadRuntime.unlockScheduler(flags)
    let status = body()
    ThreadRuntime.exit(status)
}
#endif

#if hasFeature(Embedded)
/// The running thread's TLS: 64 word slots for application keys (in
/// .tbss, so zero in every new thread) and the platform's own variables.
public enum ThreadLocalStorage {
    nonisolated(unsafe) static var slotsInUse: UInt32 = 0
    public static var slotCount: UInt32 { 64 }

    /// A fresh slot index, or nil when all 64 are taken.
    public static func allocateSlot() -> UInt32? {
        let flags = ThreadRuntime.lockScheduler()
        defer { ThreadRuntime.unlockScheduler(flags) }
        guard slotsInUse < slotCount else { return nil }
        slotsInUse += 1
        return slotsInUse - 1
    }

    public static func load(slot: UInt32) -> UInt64 { bmk_tls_slot_get(slot) }
    public static func store(_ value: UInt64, slot: UInt32) { bmk_tls_slot_set(slot, value) }

    /// The thread pointer (FS:0, which points to itself).
    public static var threadPointer: UInt64 { ThreadRuntime.current?.threadPointer ?? 0 }

    /// The platform's .tdata marker as this thread sees it (its initial
    /// value 0x544C53424D4B0001 shows the block was copied from the image).
    public static var marker: UInt64 { bmk_tls_marker_get() }
    public static var markerInitialValue: UInt64 { 0x544C_5342_4D4B_0001 }

    /// The platform's .tbss scratch word (zero in a new thread).
    public static var scratch: UInt64 {
        get { bmk_tls_scratch_get() }
        set { bmk_tls_scratch_set(newValue) }
    }

    /// Where the scratch word lives for this thread (inside its TLS block).
    public static var scratchAddress: UInt64 { bmk_tls_scratch_address() }

    /// Whether FS base is written with WRFSBASE (CR4.FSGSBASE set at
    /// boot) rather than WRMSR IA32_FS_BASE.
    public static var usesFSGSBaseInstructions: Bool { ThreadRuntime.useFSGSBaseInstructions }

    /// Size of the TLS segment (.tdata + .tbss) of the image.
    public static var segmentSize: UInt64 { ThreadRuntime.tlsLayout.memorySize }
}
#endif
