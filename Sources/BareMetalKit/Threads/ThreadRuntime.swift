// ThreadRuntime: guest threads of the hw platform on top of the Scheduler
// model: guarded stacks, the context switch (switch.S), TLS blocks through
// the FS base (x86-64 ELF TLS variant II: the block ends at the thread
// pointer, and FS:0 holds the thread pointer itself; "ELF Handling For
// Thread-Local Storage" §3.4.6), idle through ProcessorIdle, and the thread
// that runs the application's main. Cooperative on one CPU: every change to
// run or wait queues happens with interrupts disabled (flags saved and
// restored), so an interrupt handler may call `wake`.
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

    init(id: ThreadID, name: [UInt8], guardPage: UInt64, stackTop: UInt64, tlsBlock: UnsafeMutableRawPointer?, threadPointer: UInt64, body: (() -> Int)?) {
        self.id = id
        self.name = name
        self.context = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        self.context.pointee = 0
        self.guardPage = guardPage
        self.stackTop = stackTop
        self.tlsBlock = tlsBlock
        self.threadPointer = threadPointer
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
}

/// One CPU's view: the thread it runs. Kept per processor so the SMP work
/// can add one per CPU (found through GS base) without changing callers.
struct ProcessorState {
    var current: ThreadControl? = nil
    /// Interrupt flags of the critical section that switched to a new
    /// thread; that thread restores them when it starts.
    var switchFlags: UInt64 = 0
    /// Where the boot stack's RSP went when main's thread took over (never resumed).
    var bootContext: UnsafeMutablePointer<UInt64>? = nil
}

public enum ThreadRuntime {
    nonisolated(unsafe) static var scheduler = Scheduler(priorityLevels: 4)
    nonisolated(unsafe) static var threads: [ThreadControl?] = []
    nonisolated(unsafe) static var processors: [ProcessorState] = [ProcessorState()]
    /// Detached threads that exited; freed by the next thread to run.
    nonisolated(unsafe) static var pendingRelease: [ThreadControl] = []
    nonisolated(unsafe) static var useFSGSBaseInstructions = false
    nonisolated(unsafe) static var tlsLayout = TLSLayout(imageStart: 0, fileSize: 0, memorySize: 0)
    nonisolated(unsafe) static var switchCount: UInt64 = 0

    /// The default priority (of 0 ... 3) and stack size of new threads.
    public static var normalPriority: Int { 1 }
    public static var defaultStackSize: Int { 64 * 1024 }
    /// main() gets a larger stack than other threads.
    public static var mainStackSize: Int { 256 * 1024 }

    static var processorIndex: Int { 0 }

    /// The running thread (nil only before `runMain`).
    public static var current: ThreadControl? { processors[processorIndex].current }

    /// Context switches so far (statistics for benchmarks).
    public static var contextSwitches: UInt64 { switchCount }

    // MARK: Start

    /// Calibrates the clocks, prepares TLS and FS base handling, and runs
    /// the application's `main` on a thread with a guarded stack; the guest
    /// exits with main's status when it returns. Called once by the boot path.
    public static func runMain() -> Never {
        SystemClock.start()
        let cpu = CPUInformation(source: HardwareCPUID())
        if cpu.has(.fsgsbase) {
            cpu_write_cr4(cpu_read_cr4() | (1 << 16))  // CR4.FSGSBASE
            useFSGSBaseInstructions = true
        }
        tlsLayout = TLSLayout(
            imageStart: UInt64(bmk_tls_image_start()),
            fileSize: UInt64(bmk_tls_image_end() - bmk_tls_image_start()),
            memorySize: UInt64(bmk_tls_segment_end() - bmk_tls_image_start()))
        let flags = cpu_save_and_disable_interrupts()
        let main: ThreadControl
        do throws(ThreadError) {
            main = try makeThread(name: Array("main".utf8), priority: normalPriority, stackSize: mainStackSize) {
                let status = bmk_call_main()
                Platform.exit(status)
            }
        } catch {
            Platform.panic("threads: cannot allocate main's stack and TLS block")
        }
        guard scheduler.schedule() == main.id else { Platform.panic("threads: main is not the first thread") }
        processors[processorIndex].current = main
        processors[processorIndex].switchFlags = flags
        loadThreadPointer(main.threadPointer)
        // A word of its own for the boot stack's RSP: an inout access to
        // `processors` here would never end (the switch does not return).
        let bootContext = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        processors[processorIndex].bootContext = bootContext
        bmk_context_switch(bootContext, main.context.pointee)
        Platform.panic("threads: the boot stack was resumed")
    }

    // MARK: Creation, exit, join

    /// Creates a runnable thread running `body`; its return value is what
    /// `join` returns. `stackSize` is rounded up to whole pages (at least 4).
    public static func spawn(
        name: [UInt8], priority: Int = normalPriority, stackSize: Int = defaultStackSize, body: @escaping () -> Int
    ) throws(ThreadError) -> ThreadControl {
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        return try makeThread(name: name, priority: priority, stackSize: stackSize, body: body)
    }

    static func makeThread(name: [UInt8], priority: Int, stackSize: Int, body: @escaping () -> Int) throws(ThreadError) -> ThreadControl {
        let pages = max(UInt64((stackSize + 4095) / 4096), 4)
        guard Platform.pageTables != nil, Platform.heap != nil else { throw .outOfMemory(what: "stack (no page tables yet)") }
        let top: UInt64
        do throws(PlatformCoreError) {
            top = try MemoryLock.withLock { () throws(PlatformCoreError) in
                try PlatformCore.allocateStack(pages: pages, mapper: &Platform.pageTables!, allocator: &Platform.heap!.pages.allocator)
            }
        } catch {
            throw .outOfMemory(what: "stack")
        }
        let guardPage = top - (pages + 1) * PageSize.small
        let (block, threadPointer) = tlsLayout.makeBlock()
        if tlsLayout.memorySize > 0 && block == nil {
            releaseStack(guardPage: guardPage)
            throw .outOfMemory(what: "TLS block")
        }
        let id = scheduler.createThread(priority: priority)
        let thread = ThreadControl(id: id, name: name, guardPage: guardPage, stackTop: top, tlsBlock: block, threadPointer: threadPointer, body: body)
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
        return thread
    }

    /// Ends the calling thread; `join` returns `status`.
    public static func exit(_ status: Int) -> Never {
        let flags = cpu_save_and_disable_interrupts()
        guard let me = current else { Platform.panic("threads: exit outside a thread") }
        me.body = nil
        check { () throws(SchedulerError) in try scheduler.exit(status: status) }
        if me.detached { pendingRelease.append(me) }
        reschedule(flags: flags)
        Platform.panic("threads: an exited thread was resumed")
    }

    /// Waits for `thread` to end and returns its status; frees its stack.
    public static func join(_ thread: ThreadControl) throws(ThreadError) -> Int {
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
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
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        if case .exited = scheduler.state(of: thread.id) {
            if scheduler.exitStatus(of: thread.id) != nil { release(thread) }
        } else {
            thread.detached = true
        }
    }

    // MARK: Yield, sleep, block and wake

    /// Lets every other runnable thread of the same or higher priority run.
    public static func yield() {
        let flags = cpu_save_and_disable_interrupts()
        check { () throws(SchedulerError) in try scheduler.yield() }
        reschedule(flags: flags)
        cpu_restore_interrupts(flags)
    }

    /// Sleeps until the monotonic clock reaches `deadline` (ns); never early.
    public static func sleep(until deadline: UInt64) {
        let flags = cpu_save_and_disable_interrupts()
        check { () throws(SchedulerError) in try scheduler.sleep(until: deadline) }
        reschedule(flags: flags)
        cpu_restore_interrupts(flags)
    }

    /// Blocks the calling thread until `wake` (or `deadline`, monotonic ns).
    /// Returns how it ended; a wake that came before the block counts.
    @discardableResult
    public static func block(deadline: UInt64? = nil) -> WakeReason {
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        var parked = false
        check { () throws(SchedulerError) in parked = try scheduler.park(deadline: deadline) }
        guard parked else { return .signaled }
        reschedule(flags: flags)
        return currentWakeReason
    }

    /// Makes a blocked thread runnable (or leaves a pending wake for its
    /// next `block`). Safe from interrupt handlers; never switches threads.
    @discardableResult
    public static func wake(_ thread: ThreadID) -> Bool {
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
        return scheduler.unpark(thread)
    }

    static var currentWakeReason: WakeReason {
        guard let me = current else { return .signaled }
        return scheduler.wakeReason(of: me.id) ?? .signaled
    }

    // MARK: Switching

    /// Picks the next thread and switches to it (returns at once when the
    /// caller keeps running). Called with interrupts disabled; `flags` are
    /// the caller's saved flags: idle waits with them restored.
    static func reschedule(flags: UInt64) {
        let processor = processorIndex
        guard let me = processors[processor].current else { Platform.panic("threads: reschedule without a thread") }
        while true {
            scheduler.advanceTime(to: SystemClock.monotonicNanoseconds)
            if let next = scheduler.schedule() {
                if next == me.id { return }
                guard let target = threads[next.rawValue] else { Platform.panic("threads: scheduled a released thread") }
                processors[processor].current = target
                processors[processor].switchFlags = flags
                switchCount &+= 1
                loadThreadPointer(target.threadPointer)
                bmk_context_switch(me.context, target.context.pointee)
                afterSwitch()
                return
            }
            let deadline = scheduler.nextDeadline
            if deadline == nil && flags & (1 << 9) == 0 {
                Platform.panic("threads: deadlock: every thread is blocked, no timer is pending and interrupts are off")
            }
            cpu_restore_interrupts(flags)
            ProcessorIdle.wait(untilTSC: deadline.map { SystemClock.tsc(atMonotonic: $0) })
            cpu_disable_interrupts()
        }
    }

    /// First thing a thread does after it was switched to.
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
        MemoryLock.withLock { releaseStackLocked(guardPage: guardPage) }
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
            }
        }
    }
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
/// thread's own stack, interrupts still disabled by the switch).
@_cdecl("bmk_thread_entry")
public func threadEntry(_ argument: UInt64) -> Never {
    let processor = ThreadRuntime.processorIndex
    ThreadRuntime.afterSwitch()
    let flags = ThreadRuntime.processors[processor].switchFlags
    guard let me = ThreadRuntime.threads[Int(argument)], let body = me.body else {
        Platform.panic("threads: a thread started without a body")
    }
    cpu_restore_interrupts(flags)
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
        let flags = cpu_save_and_disable_interrupts()
        defer { cpu_restore_interrupts(flags) }
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
