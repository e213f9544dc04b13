// interrupts: exercises the interrupt layer inside a guest (integration
// tests): LAPIC timer waits that never return early, the RTC's IRQ 8 and the
// PIT's IRQ 0 routed through the I/O APIC (with the MADT's overrides), an
// unhandled vector and a storm that are reported but not fatal, wake-ups by
// IPI; on `pc` with NICs, e1000 INTx (raised through ICS, and a level
// storm) and ARP exchanges on virtio-net (MSI-X or INTx) and e1000 while the
// CPU sleeps in HLT. Exits with the number of failures.
import BareMetalKit
import DeviceInterfaces
import Rumprun

var failures: Int32 = 0

func check(_ condition: Bool) {
    if !condition { failures += 1 }
}

func now() -> UInt64 { PlatformCore.readTSC() }

// Only for the durations printed (nothing checked depends on it): the PIT
// where there is one (pc), else an assumed 2 GHz (microvm has no PIT).
let measuredTSC = PlatformCore.calibrateTSCWithPIT()?.ticksPerSecond
let tscPerSecond: UInt64 = measuredTSC ?? 2_000_000_000
let tscPerMillisecond = tscPerSecond / 1000

func microseconds(_ ticks: UInt64) -> UInt64 { ticks / max(tscPerSecond / 1_000_000, 1) }

// MARK: Status

guard Interrupts.isRunning, let routing = Interrupts.routing else {
    print("interrupts: not running")
    Rumprun.exit(1)
}
let source: StaticString =
    switch Platform.firmware.source {
    case .acpi: "ACPI"
    case .multiprocessorTable: "the MP table"
    case .none: "nothing"
    }
let timerMode: StaticString = LocalAPICTimer.mode == .tscDeadline ? "TSC-deadline" : "one-shot"
let apicMode: StaticString = Interrupts.localAPIC!.isX2APIC ? "x2APIC" : "xAPIC"
print("interrupts: running, \(apicMode), timer \(timerMode), \(routing.controllers.count) I/O APICs from \(source)")
print("tsc: \(tscPerSecond / 1_000_000) MHz \(measuredTSC == nil ? "assumed (no PIT)" : "measured with the PIT")")
print("interrupts: start took \(microseconds(Interrupts.startTicks)) us, \(FirmwareDiscovery.mappedPageCount) firmware pages mapped read-only")

// MARK: Timer

do {
    let timerBefore = Interrupts.statistics.timer
    let haltsBefore = Interrupts.statistics.halts
    var early = 0
    var worst: UInt64 = 0
    var lateness = ""

    // A wait whose deadline passed before it could halt (a loaded host
    // may stall the guest) returns without sleeping; that is allowed, an
    // early return is not.
    let waits: [UInt64] = [1, 5, 20, 50, 200]
    for milliseconds in waits {
        let deadline = now() + milliseconds * tscPerMillisecond
        ProcessorIdle.wait(untilTSC: deadline)
        let returned = now()
        if returned < deadline { early += 1 } else { worst = max(worst, returned - deadline) }
        lateness += returned < deadline ? " early" : " \(microseconds(returned - deadline))"

    }
    let timers = Interrupts.statistics.timer - timerBefore
    let halts = Interrupts.statistics.halts - haltsBefore
    print("timer: \(waits.count) waits, \(early) returned early, timer interrupts \(timers > 0 ? "arrived" : "MISSING"), halted \(halts > 0 ? "yes" : "no")")
    print("timer: lateness per wait (us):\(lateness); worst \(microseconds(worst)) us, \(timers) timer interrupts, \(halts) halts")
    check(early == 0 && timers > 0 && halts > 0)
}

do {
    // No device handler yet: a wait without deadline must still return.
    ProcessorIdle.wait(untilTSC: nil)
    print("idle: wait without deadline returns while no device interrupt is registered: yes")
}

// MARK: Legacy lines

let cmos = PortRegisters(base: 0x70)
func cmosRead(_ register: UInt8) -> UInt8 {
    cmos.write8(at: 0, register | 0x80)
    return cmos.read8(at: 1)
}
func cmosWrite(_ register: UInt8, _ value: UInt8) {
    cmos.write8(at: 0, register | 0x80)
    cmos.write8(at: 1, value)
}

func describe(_ line: InterruptLine?) -> String {
    guard let line else { return "no line" }
    return "GSI \(line.globalSystemInterrupt) \(line.levelTriggered ? "level" : "edge")"
}

/// Clears a wake-up left pending by an earlier claimed interrupt (a wait
/// whose deadline has passed returns at once and consumes it).
func drainPendingWakeUp() { ProcessorIdle.wait(untilTSC: 0) }

/// Sleeps until `done()` or `milliseconds` passed; returns whether done.
func sleep(until done: () -> Bool, milliseconds: UInt64) -> Bool {
    let limit = now() + milliseconds * tscPerMillisecond
    while !done() && now() < limit { ProcessorIdle.wait(untilTSC: limit) }
    return done()
}

var rtcInterrupts = 0
do {
    _ = cmosRead(0x0C)
    let registration = try Interrupts.register(isaIRQ: 8) { _ in
        // Register C says why; reading it lets the RTC raise IRQ 8 again.
        guard cmosRead(0x0C) & 0x40 != 0 else { return false }
        rtcInterrupts += 1
        return true
    }
    cmosWrite(0x0A, (cmosRead(0x0A) & 0xF0) | 0x06)  // periodic rate 1024 Hz
    cmosWrite(0x0B, cmosRead(0x0B) | 0x40)  // PIE
    let done = sleep(until: { rtcInterrupts >= 10 }, milliseconds: 5000)
    cmosWrite(0x0B, cmosRead(0x0B) & ~0x40)
    Interrupts.unregister(registration)
    _ = cmosRead(0x0C)
    print("rtc: IRQ 8 -> \(describe(registration.line)), periodic interrupts \(done ? "delivered" : "MISSING (\(rtcInterrupts))")")
    check(done)
} catch {
    print("rtc: IRQ 8 not routable")
    failures += 1
}

var pitInterrupts = 0
if routing.isaOverrides.contains(where: { $0.irq == 0 }) {
    do {
        let registration = try Interrupts.register(isaIRQ: 0) { _ in
            pitInterrupts += 1
            return true
        }
        let pit = PortRegisters(base: 0x40)
        pit.write8(at: 3, 0x34)  // channel 0, lobyte/hibyte, mode 2 (rate generator)
        pit.write8(at: 0, UInt8(1193 & 0xFF))  // about 1 kHz
        pit.write8(at: 0, UInt8(1193 >> 8))
        let done = sleep(until: { pitInterrupts >= 10 }, milliseconds: 5000)
        Interrupts.unregister(registration)
        pit.write8(at: 3, 0x30)  // mode 0: one terminal count, then quiet
        pit.write8(at: 0, 0xFF)
        pit.write8(at: 0, 0xFF)
        print("pit: IRQ 0 -> \(describe(registration.line)) (override), interrupts \(done ? "delivered" : "MISSING (\(pitInterrupts))")")
        check(done)
    } catch {
        print("pit: IRQ 0 not routable")
        failures += 1
    }
} else {
    print("pit: the MADT has no IRQ 0 override, skipped")
}

// MARK: Unexpected vectors, IPIs, storms

do {
    // An RTC or PIT interrupt raised just before its line was unregistered
    // can still sit in the local APIC; 0xD0 outranks it, so it would arrive
    // right after 0xD0 and be counted too. Let such stragglers in first.
    _ = sleep(until: { false }, milliseconds: 20)
    let before = Interrupts.statistics.unhandled
    Interrupts.sendSelfIPI(vector: 0xD0)
    _ = sleep(until: { Interrupts.statistics.unhandled != before }, milliseconds: 2000)
    let reported = Interrupts.statistics.unhandled - before == 1 && Interrupts.statistics.lastUnhandledVector == 0xD0
    print("unhandled: vector 0xd0 counted and ignored: \(reported ? "yes" : "no")")
    check(reported)
}

var ipiCount = 0
var hookCalls = 0
do {
    Interrupts.wakeHook = { hookCalls += 1 }
    let registration = try Interrupts.register { _ in
        ipiCount += 1
        return true
    }
    // Sent with interrupts disabled: it is pending when the wait starts,
    // and the STI;HLT must not lose it.
    drainPendingWakeUp()
    Interrupts.sendSelfIPI(vector: registration.vector)
    ProcessorIdle.wait(untilTSC: nil)
    Interrupts.unregister(registration)
    Interrupts.wakeHook = nil
    print("ipi: wait without deadline woken by a pending IPI: \(ipiCount == 1 ? "yes" : "no"), wake hook called \(hookCalls) time(s)")
    check(ipiCount == 1 && hookCalls == 1)
} catch {
    print("ipi: no vector")
    failures += 1
}

do {
    // Cost of one interrupt: self-IPIs taken with interrupts enabled.
    var taken = 0
    let registration = try Interrupts.register { _ in
        taken += 1
        return true
    }
    let rounds = 200
    let start = now()
    Interrupts.enable()
    for _ in 0..<rounds {
        let before = taken
        Interrupts.sendSelfIPI(vector: registration.vector)
        while taken == before {}
    }
    Interrupts.disable()
    let perInterrupt = (now() - start) / UInt64(rounds)
    Interrupts.unregister(registration)
    print("ipi: \(rounds) self-IPIs taken, \(microseconds(perInterrupt)) us each (send to handler return)")
    check(taken == rounds)
} catch {
    print("ipi: no vector")
    failures += 1
}

var stormCalls = 0
do {
    let stormsBefore = Interrupts.statistics.storms
    let registration = try Interrupts.register { vector in
        // Re-raises itself and claims nothing: a runaway source.
        stormCalls += 1
        Interrupts.sendSelfIPI(vector: vector)
        return false
    }
    Interrupts.sendSelfIPI(vector: registration.vector)
    _ = sleep(until: { Interrupts.statistics.storms != stormsBefore }, milliseconds: 5000)
    ProcessorIdle.wait(untilTSC: now() + tscPerMillisecond)  // the last re-raised IPI, now unhandled
    Interrupts.unregister(registration)
    let stopped = Interrupts.statistics.storms - stormsBefore == 1 && stormCalls == Int(Interrupts.stormThreshold)
    print("storm: self-IPI storm stopped after \(stormCalls) unclaimed interrupts: \(stopped ? "yes" : "no")")
    check(stopped)
} catch {
    print("storm: no vector")
    failures += 1
}

// MARK: Devices (pc with NICs)

let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
let dma = HeapDMAMemory()
var deviceInterrupts = 0

func hex(_ bytes: [UInt8]) -> String {
    let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    var text = ""
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return text
}

/// Sends ARP requests for QEMU's user-net gateway and sleeps in HLT between
/// receive passes; returns (reply seen, a wait ended early by the device).
func arpWhileSleeping<Interface: NetworkInterface>(_ nic: inout Interface) -> (Bool, Bool) {
    let m = nic.macAddress.bytes
    var arp: [UInt8] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, m.0, m.1, m.2, m.3, m.4, m.5, 0x08, 0x06,
        0, 1, 8, 0, 6, 4, 0, 1, m.0, m.1, m.2, m.3, m.4, m.5, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
    ]
    while arp.count < 60 { arp.append(0) }
    let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: arp.count, alignment: 16)
    defer { frame.deallocate() }
    for index in 0..<arp.count { frame[index] = arp[index] }
    var replied = false
    var wokenEarly = false
    var attempts = 0
    do throws(NetworkInterfaceError) {
        while !replied && attempts < 10 {
            try nic.send(frame: UnsafeRawBufferPointer(frame))
            attempts += 1
            // Long enough that a loaded host does not turn the device's
            // wake-up into a timer one.
            let deadline = now() + 2000 * tscPerMillisecond
            while !replied && now() < deadline {
                let before = deviceInterrupts
                ProcessorIdle.wait(untilTSC: deadline)
                if deviceInterrupts != before && now() < deadline { wokenEarly = true }
                _ = try nic.receive(limit: 8) { frame in
                    if frame.count >= 42 && frame[12] == 0x08 && frame[13] == 0x06 && frame[21] == 2
                        && frame[28] == 10 && frame[29] == 0 && frame[30] == 2 && frame[31] == 2
                    {
                        replied = true
                    }
                }
            }
        }
    } catch {
        print("network error")
    }
    return (replied, wokenEarly)
}

func report(_ label: String, _ mode: String, _ result: (Bool, Bool), _ count: Int) {
    print("\(label): \(mode), ARP reply while halted: \(result.0 ? "yes" : "no"), woken by the device interrupt: \(result.1 ? "yes" : "no"), interrupts \(count > 0 ? "counted" : "none")")
    check(result.0 && result.1 && count > 0)
}

func exerciseE1000(_ address: PCIAddress) {
    do throws(E1000Error) {
        var nic = try E1000(function: address, access: access, mapper: IdentityMappedIO(), dma: dma)
        // A level-triggered line nobody quiets: the handler does not read ICR.
        do throws(InterruptError) {
            let stormsBefore = Interrupts.statistics.storms
            let raw = try Interrupts.register(pciFunction: address, access: access) { _ in false }
            nic.enableInterrupts()
            nic.raise(.linkStatusChange)
            _ = sleep(until: { Interrupts.statistics.storms != stormsBefore }, milliseconds: 5000)
            nic.disableInterrupts()
            _ = nic.interruptCauses()
            Interrupts.unregister(raw)
            let masked = Interrupts.statistics.storms - stormsBefore == 1
            print("e1000: INTx \(describe(raw.line)), level storm masked: \(masked ? "yes" : "no")")
            check(masked)
        } catch {
            print("e1000: INTx not routable")
            failures += 1
        }
        var causesSeen: UInt32 = 0
        deviceInterrupts = 0
        let registration = try? nic.attachInterrupts(function: address, access: access) { causes in
            causesSeen |= causes.rawValue
            deviceInterrupts += 1
        }
        guard let registration else {
            print("e1000: attach failed")
            failures += 1
            nic.shutdown()
            return
        }
        nic.raise(.linkStatusChange)
        let raised = sleep(until: { causesSeen & E1000InterruptCauses.linkStatusChange.rawValue != 0 }, milliseconds: 2000)
        print("e1000: cause raised through ICS delivered: \(raised ? "yes" : "no")")
        check(raised)
        let result = arpWhileSleeping(&nic)
        report("e1000", "INTx", result, deviceInterrupts)
        nic.detachInterrupts(registration)
        nic.shutdown()
    } catch {
        print("e1000: init failed")
        failures += 1
    }
}

func exerciseVirtioNetwork(_ function: PCIFunctionInfo) {
    let address = function.address
    deviceInterrupts = 0
    do throws(VirtioError) {
        if let transport = try? VirtioPCIModernTransport(function: address, access: access, mapper: IdentityMappedIO()) {
            var nic = try VirtioNetwork(transport: transport, dma: dma)
            nic.setPolled(false)
            do throws(InterruptError) {
                let binding = try transport.attachInterrupts(access: access, queueCount: 2) { _ in deviceInterrupts += 1 }
                let mode = binding.kind == .msix ? "modern, MSI-X (\(binding.registrations.count) vectors)" : "modern, INTx \(describe(binding.line))"
                let result = arpWhileSleeping(&nic)
                report("virtio-net", mode, result, Int(binding.interruptCount))
                try? nic.shutdown()
                binding.detach(access: access)
            } catch {
                print("virtio-net: attach failed")
                failures += 1
                try? nic.shutdown()
            }
        } else if !VirtioPCI.isModernOnly(function) {
            let transport = try VirtioPCILegacyTransport(function: address, access: access, ports: HardwarePortSpace())
            var nic = try VirtioNetwork(transport: transport, dma: dma)
            nic.setPolled(false)
            do throws(InterruptError) {
                let binding = try transport.attachInterrupts(function: address, access: access) { _ in deviceInterrupts += 1 }
                let result = arpWhileSleeping(&nic)
                report("virtio-net", "legacy, INTx \(describe(binding.line))", result, Int(binding.interruptCount))
                try? nic.shutdown()
                binding.detach(access: access)
            } catch {
                print("virtio-net: attach failed")
                failures += 1
                try? nic.shutdown()
            }
        }
    } catch {
        print("virtio-net: init failed, code \(error.code)")
        failures += 1
    }
}

/// QEMU's `edu` teaching device (hw/misc/edu.c): 0x24 interrupt status,
/// 0x60 raise (ORs the value into the status and interrupts), 0x64
/// acknowledge; one MSI vector, else INTx#.
func exerciseEdu(_ address: PCIAddress) {
    guard let bar = try? PCIBAR.read(address, index: 0, access: access), bar.address != 0 else {
        print("edu: BAR 0 unusable")
        failures += 1
        return
    }
    let registers = MMIORegisters(base: UInt(bar.address))
    let command = access.read16(address, offset: PCIHeader.command)
    // MSI is a memory write by the device: bus mastering must be on.
    access.write16(address, offset: PCIHeader.command, command | PCIHeader.commandMemorySpace | PCIHeader.commandBusMaster)
    var taken = 0
    let handler: InterruptHandler = { _ in
        let status = registers.read32(at: 0x24)
        guard status != 0 else { return false }
        registers.write32(at: 0x64, status)
        taken += 1
        return true
    }
    do throws(InterruptError) {
        guard let msi = try? MSICapability.find(address, access: access) else {
            print("edu: no MSI capability")
            failures += 1
            return
        }
        let registration = try Interrupts.register(handler: handler)
        do throws(PCIError) { try msi.program(message: Interrupts.message(vector: registration.vector), access: access) } catch {
            throw .pci(error)
        }
        msi.setEnabled(true, access: access)
        registers.write32(at: 0x60, 1)
        let delivered = sleep(until: { taken == 1 }, milliseconds: 2000)
        msi.setEnabled(false, access: access)
        Interrupts.unregister(registration)
        print("edu: MSI delivered: \(delivered ? "yes" : "no")")
        check(delivered)

        taken = 0
        let line = try Interrupts.register(pciFunction: address, access: access, handler: handler)
        registers.write32(at: 0x60, 2)
        let viaLine = sleep(until: { taken == 1 }, milliseconds: 2000)
        print("edu: INTx \(describe(line.line)) delivered: \(viaLine ? "yes" : "no")")
        check(viaLine)
        // A second device's handler on the same level line: both run on
        // every interrupt, the one whose device raised it claims it.
        var neighbourCalls = 0
        let neighbour = try Interrupts.register(pciFunction: address, access: access) { _ in
            neighbourCalls += 1
            return false
        }
        taken = 0
        registers.write32(at: 0x60, 4)
        let shared = sleep(until: { taken == 1 }, milliseconds: 2000) && neighbourCalls >= 1 && neighbour.vector == line.vector
        Interrupts.unregister(neighbour)
        Interrupts.unregister(line)
        print("edu: INTx shared with a second handler on one vector, both called: \(shared ? "yes" : "no")")
        check(shared)
    } catch {
        print("edu: interrupt setup failed")
        failures += 1
    }
}

for function in PCIEnumerator.enumerate(access) {
    if function.vendorID == 0x1234 && function.deviceID == 0x11E8 {
        exerciseEdu(function.address)
    } else if function.vendorID == 0x8086 && function.deviceID == 0x100E {
        exerciseE1000(function.address)
    } else if VirtioPCI.deviceType(of: function) == VirtioPCI.networkType {
        exerciseVirtioNetwork(function)
    }
}

let statistics = Interrupts.statistics
print("interrupts: \(statistics.total) taken, \(statistics.timer) timer, \(statistics.unhandled) unhandled, \(statistics.storms) storms, \(statistics.halts) halts")
print("interrupts: \(failures) failures")
Rumprun.exit(failures)
