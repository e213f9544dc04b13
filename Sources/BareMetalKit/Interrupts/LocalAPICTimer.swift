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
    /// Per CPU (the timer is each CPU's own): armed, and expirations seen.
    nonisolated(unsafe) static var armedOn = UnsafeMutablePointer<Bool>.allocate(capacity: Processors.limit)
    nonisolated(unsafe) static var expirationsOn = UnsafeMutablePointer<UInt64>.allocate(capacity: Processors.limit)

    /// Expirations seen on every CPU (the dispatch counts the boot CPU's too).
    public static var expirations: UInt64 {
        guard apic != nil else { return 0 }
        var total: UInt64 = 0
        for index in 0..<Processors.count { total &+= expirationsOn[index] }
        return total
    }

    /// Expirations seen on CPU `index`.
    public static func expirations(on index: Int) -> UInt64 {
        guard apic != nil, index >= 0, index < Processors.limit else { return 0 }
        return expirationsOn[index]
    }

    /// Picks the mode; leaves the timer idle.
    static func start(apic: LocalAPIC, cpu: CPUInformation) {
        armedOn.initialize(repeating: false, count: Processors.limit)
        expirationsOn.initialize(repeating: 0, count: Processors.limit)
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

    /// An AP's timer, in the mode the boot CPU chose (its LVT and divider
    /// are per CPU); idle until armed.
    static func startOnApplicationProcessor(apic: LocalAPIC) {
        guard self.apic != nil else { return }
        if mode == .tscDeadline {
            apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.tscDeadline.lvt(vector: InterruptVectors.timer))
            cpu_memory_barrier()
            cpu_wrmsr(deadlineMSR, 0)
            return
        }
        apic.write(LocalAPICRegister.timerDivide, divideBy16)
        apic.write(LocalAPICRegister.timerInitialCount, 0)
        apic.write(LocalAPICRegister.timerVector, LocalAPICTimerMode.oneShot.lvt(vector: InterruptVectors.timer))
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
        armedOn[Processors.currentIndex] = true
        if mode == .tscDeadline {
            cpu_wrmsr(deadlineMSR, max(deadline, 1))
            return
        }
        if ticksPerTSCTick == 0 {
            // Measured once, on whichever CPU arms first; an AP that arms
            // meanwhile measures too (the same rate), then leaves its timer
            // in one-shot mode like the boot CPU's.
            calibrate(apic: apic)
        }
        let now = cpu_rdtsc()
        let ticks = deadline > now ? deadline - now : 1
        apic.write(LocalAPICRegister.timerInitialCount, LocalAPICTimerMode.oneShotCount(forTSCTicks: ticks, ratio: ticksPerTSCTick))
    }

    /// Stops a pending expiry.
    public static func disarm() {
        let index = Processors.currentIndex
        guard let apic, armedOn[index] else { return }
        armedOn[index] = false
        if mode == .tscDeadline {
            cpu_wrmsr(deadlineMSR, 0)
        } else {
            apic.write(LocalAPICRegister.timerInitialCount, 0)
        }
    }

    static func expired() {
        let index = Processors.currentIndex
        expirationsOn[index] &+= 1
        armedOn[index] = false
    }
}
#endif
