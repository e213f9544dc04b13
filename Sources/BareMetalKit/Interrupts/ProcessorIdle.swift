// ProcessorIdle: the one place the guest waits for time to pass or for an
// interrupt. The scheduler calls it when no thread is runnable. With the
// interrupt layer running, the wait arms the LAPIC timer for the deadline
// and executes STI;HLT (no lost wake-up: STI's one-instruction shadow means
// an interrupt already pending is taken inside the HLT, not before it);
// before `Interrupts.start()` it is a PAUSE loop on the TSC. Every CPU's
// idle loop waits here, with its own LAPIC timer and its own wake flag.
#if hasFeature(Embedded)
import CPUPrimitives

public enum ProcessorIdle {
    /// TSC ticks a wait without deadline lasts when no device interrupt is
    /// registered (about 0.3–1 ms on current CPUs).
    public static var unboundedWaitLimit: UInt64 { 1 << 20 }

    /// Returns when the TSC has reached `deadline`, or earlier when a
    /// device interrupt or IPI was claimed by its handler (it may have made
    /// a thread runnable). `nil` means no deadline: wait for the next such
    /// interrupt (bounded by `unboundedWaitLimit` while no device interrupt
    /// is registered). Timer expiries before the deadline do not return. Callers
    /// re-check their own conditions after every return (spurious returns
    /// are allowed). Restores the caller's interrupt flag.
    public static func wait(untilTSC deadline: UInt64?) {
        bmk_idle_wait(deadline ?? 0, deadline == nil ? 0 : 1)  // PrivilegedOperations.h
    }

    /// The hw wait (bmk_hw_idle_wait).
    static func waitOnHardware(untilTSC deadline: UInt64?) {
        guard Interrupts.isRunning else {
            guard let deadline else {
                cpu_pause()
                return
            }
            while cpu_rdtsc() < deadline { cpu_pause() }
            return
        }
        // With no device interrupt registered nothing but the timer can end
        // a wait without deadline: bound it, so that a scheduler over polled
        // drivers keeps polling (as the PAUSE loop did).
        // Only the boot CPU polls: APs take no device interrupts and are
        // woken by IPI when a thread is queued for them.
        let processor = Processors.currentIndex
        var deadline = deadline
        if deadline == nil && processor == 0 && Interrupts.allocator.allocatedCount == 0 {
            deadline = cpu_rdtsc() &+ unboundedWaitLimit
        }
        let wasEnabled = cpu_save_and_disable_interrupts() & (1 << 9) != 0
        while true {
            if Interrupts.wakePending[processor] {
                Interrupts.wakePending[processor] = false
                break
            }
            if let deadline {
                if cpu_rdtsc() >= deadline { break }
                LocalAPICTimer.arm(deadline: deadline)
            }
            if processor == 0 { Interrupts.statistics.halts &+= 1 }
            cpu_idle_enable_interrupts_and_halt()
            cpu_disable_interrupts()
        }
        LocalAPICTimer.disarm()
        if wasEnabled { cpu_enable_interrupts() }
    }
}

@_cdecl("bmk_hw_idle_wait")
public func hwIdleWait(_ deadline: UInt64, _ hasDeadline: Int32) {
    ProcessorIdle.waitOnHardware(untilTSC: hasDeadline != 0 ? deadline : nil)
}
#endif
