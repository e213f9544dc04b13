// LocalAPICTimer: one-shot wake-ups from the local APIC timer (Intel SDM
// vol. 3A §11.5.4): TSC-deadline mode when CPUID.1:ECX[24] offers it (the
// deadline is written to IA32_TSC_DEADLINE, MSR 0x6E0), else one-shot mode
// with the count converted from TSC ticks by a ratio measured at start.
// There is no periodic tick: the timer is armed only while idle waits.
#if hasFeature(Embedded)
import CPUPrimitives

public enum LocalAPICTimer {
    static var deadlineMSR: UInt32 { 0x6E0 }
    /// Divide Configuration 0b0011: divide by 16.
    static var divideBy16: UInt32 { 0x3 }
    /// TSC ticks the calibration measures over.
    static var calibrationTicks: UInt64 { 1 << 24 }

    nonisolated(unsafe) public private(set) static var mode: LocalAPICTimerMode = .oneShot
    /// APIC timer ticks (after the divider) per TSC tick, 32.32 fixed point.
    nonisolated(unsafe) public private(set) static var ticksPerTSCTick: UInt64 = 0
    nonisolated(unsafe) static var apic: LocalAPIC? = nil
    nonisolated(unsafe) static var armed = false
    /// Expirations seen (the dispatch counts them too).
    nonisolated(unsafe) public private(set) static var expirations: UInt64 = 0

    /// Picks the mode; leaves the timer idle.
    static func start(apic: LocalAPIC, cpu: CPUInformation) {
        self.apic = apic
        if cpu.has(.tscDeadline) {
            mode = .tscDeadline
            apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.tscDeadline.lvt(vector: InterruptVectors.timer))
            cpu_memory_barrier()
            cpu_wrmsr(deadlineMSR, 0)
            return
        }
        mode = .oneShot
        // The ratio is measured on the first arm, not here: the measurement
        // spins for 2^24 TSC ticks, which boot should not pay for.
        apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.oneShot.lvt(vector: InterruptVectors.timer, masked: true))
    }

    /// Measures APIC timer ticks per TSC tick (one-shot mode).
    static func calibrate(apic: LocalAPIC) {
        apic.write(LocalAPICRegister.timerDivide, divideBy16)
        apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.oneShot.lvt(vector: InterruptVectors.timer, masked: true))
        apic.write(LocalAPICRegister.timerInitialCount, 0xFFFF_FFFF)
        let startTSC = cpu_rdtsc()
        let startCount = apic.read(LocalAPICRegister.timerCurrentCount)
        var nowTSC = startTSC
        while nowTSC &- startTSC < calibrationTicks { nowTSC = cpu_rdtsc() }
        let endCount = apic.read(LocalAPICRegister.timerCurrentCount)
        apic.write(LocalAPICRegister.timerInitialCount, 0)
        let elapsedAPIC = UInt64(startCount &- endCount)
        let elapsedTSC = nowTSC &- startTSC
        // At least one APIC tick per 2^32 TSC ticks, so arming always counts.
        ticksPerTSCTick = max(1, (elapsedAPIC << 32) / max(elapsedTSC, 1))
        apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.oneShot.lvt(vector: InterruptVectors.timer))
    }

    /// Arms the timer to interrupt at (or, capped, before) TSC `deadline`.
    public static func arm(deadline: UInt64) {
        guard let apic else { return }
        armed = true
        if mode == .tscDeadline {
            cpu_wrmsr(deadlineMSR, max(deadline, 1))
            return
        }
        if ticksPerTSCTick == 0 { calibrate(apic: apic) }
        let now = cpu_rdtsc()
        let ticks = deadline > now ? deadline - now : 1
        apic.write(LocalAPICRegister.timerInitialCount, LocalAPICTimerMode.oneShotCount(forTSCTicks: ticks, ratio: ticksPerTSCTick))
    }

    /// Stops a pending expiry.
    public static func disarm() {
        guard let apic, armed else { return }
        armed = false
        if mode == .tscDeadline {
            cpu_wrmsr(deadlineMSR, 0)
        } else {
            apic.write(LocalAPICRegister.timerInitialCount, 0)
        }
    }

    static func expired() {
        expirations &+= 1
        armed = false
    }
}
#endif
