// CPU discovery from the MP table when the firmware offers no ACPI tables:
// microvm with acpi=off (qboot still writes an MP table listing every CPU).
import Foundation
import Testing

@Suite(.serialized) struct SMPFirmwareTests {
    @Test(arguments: [2, 4])
    func processorsComeUpFromTheMPTableWithoutACPI(processors: Int) throws {
        let image = try Integration.smp.get()
        let run = try Integration.run([
            "run", "qemu", "-i", "--timeout", "300", "--machine", "microvm", "--smp", String(processors),
            "-g", "-machine acpi=off", image,
        ])
        #expect(run.stdout.contains("smp: \(processors) cpus online\n"), "\(run.stdout)\n\(run.stderr)")
        let total = 100_000 * processors
        #expect(run.stdout.contains("smp: atomic total \(total) of \(total)\n"), "\(run.stdout)")
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)")
    }
}
