// TLB shootdown under QEMU TCG (Tests/Guests/smp, TLBScenarios.swift): QEMU
// keeps a software TLB per vCPU that only INVLPG and CR3/CR4 writes flush, so
// a CPU that was not told about an unmap keeps reading the page; with the
// shootdown its next read must fault at the unmapped address.
import Foundation
import Testing

extension SMPTests {
    /// The number after `marker` (hexadecimal with a 0x prefix).
    static func hexNumber(after marker: String, in text: String) -> UInt64? {
        guard let range = text.range(of: marker) else { return nil }
        let digits = text[range.upperBound...].prefix { $0.isHexDigit || $0 == "x" }
        guard digits.hasPrefix("0x") else { return nil }
        return UInt64(digits.dropFirst(2), radix: 16)
    }

    /// The region the guest unmapped and the address its fault report names.
    static func unmappedRegionAndFault(_ stdout: String) -> (start: UInt64, pages: UInt64, faultAddress: UInt64)? {
        guard let start = hexNumber(after: "smp: tlb: unmapping region ", in: stdout),
            let line = stdout.components(separatedBy: "\n").first(where: { $0.hasPrefix("smp: tlb: unmapping region ") }),
            let pages = line.components(separatedBy: " pages ").last.flatMap({ UInt64($0) }),
            let report = stdout.components(separatedBy: "\n").first(where: { $0.hasPrefix("rumprun: exception: ") }),
            let faultAddress = hexNumber(after: " CR2 ", in: report)
        else { return nil }
        return (start, pages, faultAddress)
    }

    @Test(arguments: [("pc", 2, "tlb"), ("microvm", 2, "tlb"), ("pc", 4, "tlb-full"), ("microvm", 4, "tlb-full")])
    func aPageUnmappedOnOneCPUFaultsOnTheOthers(machine: String, processors: Int, mode: String) throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", machine, "--smp", String(processors), image, "--", mode])
        let output = "\(run.stdout)\n\(run.stderr)"
        #expect(run.stdout.contains("smp: \(processors) cpus online\n"), "\(output)")
        // Warm-up: two requests (read-only, then read-write) reached every
        // AP; one page is one INVLPG each, 64 pages a whole flush each.
        for cpu in 1..<processors {
            let flushes = mode == "tlb" ? "0 full flushes, 2 pages" : "2 full flushes, 0 pages"
            #expect(run.stdout.contains("smp: tlb: warm-up: cpu \(cpu) answered 2 requests, \(flushes)\n"), "\(output)")
        }
        #expect(run.stdout.contains("smp: tlb: \(processors - 1) readers hold the region in their TLBs\n"), "\(output)")
        #expect(!run.stdout.contains("stale TLB entry"), "\(output)")
        #expect(run.stdout.contains("rumprun: exception: #PF (vector 14) error code 0x0 RIP 0x"), "\(output)")
        let found = try #require(Self.unmappedRegionAndFault(run.stdout), "\(output)")
        #expect(found.pages == (mode == "tlb" ? 1 : 64))
        if found.pages == 1 {
            #expect(found.faultAddress == found.start, "\(output)")
        } else {
            #expect(found.faultAddress >= found.start && found.faultAddress < found.start + found.pages * 4096, "\(output)")
            #expect(found.faultAddress % 4096 == 0, "\(output)")
        }
        #expect(run.status == 121, "\(output)")
    }

    /// CPU 1 unmaps; the boot CPU, reading with interrupts on, is the target.
    @Test func aPageUnmappedByAnApplicationProcessorFaultsOnTheBootProcessor() throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "--smp", "2", image, "--", "tlb-ap"])
        let output = "\(run.stdout)\n\(run.stderr)"
        #expect(!run.stdout.contains("stale TLB entry"), "\(output)")
        let found = try #require(Self.unmappedRegionAndFault(run.stdout), "\(output)")
        #expect(found.pages == 4)
        #expect(found.faultAddress >= found.start && found.faultAddress < found.start + 4 * 4096, "\(output)")
        #expect(run.status == 121, "\(output)")
    }

    @Test func aCPUThatNeverAcknowledgesIsNamedInOnePanic() throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", "pc", "--smp", "4", image, "--", "tlb-stuck"])
        let output = "\(run.stdout)\n\(run.stderr)"
        #expect(run.stdout.contains("smp: tlb: cpu 1 spins with interrupts off\n"), "\(output)")
        let report = "rumprun: panic: TLB shootdown not acknowledged by cpu 1 (APIC id 1) within 5000 ms\n"
        #expect(run.stdout.components(separatedBy: report).count - 1 == 1, "\(output)")
        #expect(run.stdout.components(separatedBy: "rumprun: panic:").count - 1 == 1, "\(output)")
        #expect(!run.stdout.contains("unmap returned"), "\(output)")
        #expect(run.status == 120, "\(output)")
    }

    /// Every CPU changes its own page's rights and flushes it, 40 times each,
    /// all at once: initiators wait on the locks with interrupts off and
    /// must answer each other's requests there.
    @Test(arguments: [("pc", 4), ("microvm", 2)])
    func concurrentShootdownsNeitherDeadlockNorLoseAnAnswer(machine: String, processors: Int) throws {
        let image = try Integration.smp.get()
        let run = try Integration.run(["run", "qemu", "-i", "--timeout", "300", "--machine", machine, "--smp", String(processors), image, "--", "tlb-contend"])
        let output = "\(run.stdout)\n\(run.stderr)"
        let requests = 3 * 40 * processors
        #expect(run.stdout.contains("smp: tlb: contention: \(requests) requests of \(requests), \(requests) sent\n"), "\(output)")
        let answers = requests * (processors - 1)
        #expect(run.stdout.contains("smp: tlb: contention: \(answers) answers of \(answers)\n"), "\(output)")
        #expect(run.stdout.contains("smp: tlb: contention: 0 wrong values\n"), "\(output)")
        #expect(run.status == 0, "\(output)")
    }
}
