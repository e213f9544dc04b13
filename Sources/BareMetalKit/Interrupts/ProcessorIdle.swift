// ProcessorIdle: the one place the guest waits for time to pass or for an
// interrupt. The scheduler calls it when no thread is runnable; the interrupt
// layer decides how the wait happens (today a PAUSE loop on the TSC; with the
// LAPIC timer, arm a TSC deadline and HLT with interrupts enabled).
#if hasFeature(Embedded)
import CPUPrimitives

public enum ProcessorIdle {
    /// Returns when the TSC has reached `deadline`, or earlier when an
    /// interrupt may have made a thread runnable. `nil` means no deadline:
    /// wait for the next interrupt. Callers re-check their own conditions
    /// after every return (spurious returns are allowed).
    public static func wait(untilTSC deadline: UInt64?) {
        guard let deadline else {
            cpu_pause()
            return
        }
        while cpu_rdtsc() < deadline { cpu_pause() }
    }
}
#endif
