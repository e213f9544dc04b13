// Integration: the interrupt layer in a booted guest (Tests/Guests/interrupts)
// under TCG: LAPIC timer waits, legacy lines through the I/O APIC, unhandled
// vectors and storms, and on `pc` QEMU's virtio-net (MSI-X, INTx, legacy
// INTx) and e1000 (INTx) delivering ARP replies to a guest asleep in HLT.
import Foundation
import Testing

extension Integration {
    static let interrupts: Result<String, Error> = Result { try bake("Tests/Guests/interrupts").path }
}

@Suite(.serialized) struct InterruptTests {
    /// The lines every machine must print, whatever its devices.
    static func expectCoreLines(_ run: (status: Int32, stdout: String, stderr: String)) {
        let out = run.stdout
        #expect(out.contains("interrupts: running, "), "stdout: \(out)")
        #expect(out.contains("timer: 5 waits, 0 returned early, timer interrupts arrived, halted yes\n"), "stdout: \(out)")
        #expect(out.contains("idle: wait without deadline returns while no device interrupt is registered: yes\n"))
        #expect(out.contains("rtc: IRQ 8 -> GSI 8 edge, periodic interrupts delivered\n"), "stdout: \(out)")
        // An IPI to a vector nobody registered is reported once and ignored.
        #expect(out.contains("rumprun: interrupt: unexpected vector 0xd0 (no handler), ignored\n"))
        #expect(out.contains("unhandled: vector 0xd0 counted and ignored: yes\n"))
        #expect(out.contains("ipi: wait without deadline woken by a pending IPI: yes, wake hook called 1 time(s)\n"))
        #expect(out.contains("rumprun: interrupt storm on vector 0x"))
        #expect(out.contains("storm: self-IPI storm stopped after 1000 unclaimed interrupts: yes\n"))
        #expect(out.contains("interrupts: 0 failures\n"), "stdout: \(out)")
        #expect(run.status == 0, "stdout: \(out) stderr: \(run.stderr)")
    }

    @Test func microvmRoutesThroughTheMADTsTwoIOAPICs() throws {
        let image = try Integration.interrupts.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "240", "--machine", "microvm", image])
        #expect(run.stdout.hasPrefix("interrupts: running, xAPIC, timer one-shot, 2 I/O APICs from ACPI\n"), "stdout: \(run.stdout)")
        // QEMU's microvm MADT lists no ISA overrides, so the PIT test is skipped there.
        #expect(run.stdout.contains("pit: the MADT has no IRQ 0 override, skipped\n"))
        Self.expectCoreLines(run)
    }

    /// microvm without ACPI: qboot's MP table is the fallback; it lists the
    /// PIT's IRQ 0 on pin 2 (which the microvm MADT omits), so the PIT works.
    @Test func withoutACPITheMPTableRoutes() throws {
        let image = try Integration.interrupts.get()
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "240", "--machine", "microvm", "-g", "-machine acpi=off", image,
        ])
        #expect(run.stdout.hasPrefix("interrupts: running, xAPIC, timer one-shot, 1 I/O APICs from the MP table\n"), "stdout: \(run.stdout)")
        #expect(run.stdout.contains("pit: IRQ 0 -> GSI 2 edge (override), interrupts delivered\n"))
        Self.expectCoreLines(run)
    }

    /// pc: the PIT through its MADT override (IRQ 0 -> GSI 2), virtio-net
    /// with MSI-X, QEMU's edu device with MSI and INTx, e1000 through INTx
    /// (a level line, also driven into a storm that must be masked).
    @Test func pcDeliversLegacyLinesMSIXAndINTx() throws {
        let image = try Integration.interrupts.get()
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc",
            "-I", "net0,virtio-net,user", "-I", "net1,e1000,user", "-g", "-device edu", image,
        ])
        #expect(run.stdout.hasPrefix("interrupts: running, xAPIC, timer one-shot, 1 I/O APICs from ACPI\n"), "stdout: \(run.stdout)")
        #expect(run.stdout.contains("pit: IRQ 0 -> GSI 2 edge (override), interrupts delivered\n"))
        #expect(run.stdout.contains(
            "virtio-net: modern, MSI-X (3 vectors), ARP reply while halted: yes, woken by the device interrupt: yes, interrupts counted\n"))
        // QEMU's edu device: plain MSI, then its INTx#.
        #expect(run.stdout.contains("edu: MSI delivered: yes\n"), "stdout: \(run.stdout)")
        #expect(run.stdout.contains("edu: INTx GSI "))
        #expect(run.stdout.contains(" level delivered: yes\n"))
        #expect(run.stdout.contains("edu: INTx shared with a second handler on one vector, both called: yes\n"))
        #expect(run.stdout.contains("e1000: INTx GSI 11 level, level storm masked: yes\n"), "stdout: \(run.stdout)")
        #expect(run.stdout.contains("(GSI 11): line masked\n"))
        #expect(run.stdout.contains("e1000: cause raised through ICS delivered: yes\n"))
        #expect(run.stdout.contains("e1000: INTx, ARP reply while halted: yes, woken by the device interrupt: yes, interrupts counted\n"))
        Self.expectCoreLines(run)
    }

    /// virtio-net without MSI-X vectors (modern INTx) and with only the
    /// legacy transport (legacy INTx).
    @Test(arguments: [("vectors=0", "modern"), ("disable-modern=on", "legacy")])
    func virtioNetworkFallsBackToINTx(option: String, transport: String) throws {
        let image = try Integration.interrupts.get()
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "pc",
            "-I", "net0,virtio-net,user", "-g", "-global virtio-net-pci.\(option)", image,
        ])
        #expect(run.stdout.contains(
            "virtio-net: \(transport), INTx GSI 10 level, ARP reply while halted: yes, woken by the device interrupt: yes, interrupts counted\n"),
            "stdout: \(run.stdout)")
        Self.expectCoreLines(run)
    }
}
