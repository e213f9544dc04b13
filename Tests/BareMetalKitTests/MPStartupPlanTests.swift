// CPU discovery without ACPI: the start-up plan from the Intel MP table's
// processor entries (qboot's tables dumped from QEMU 7.2 microvm, and one
// with an entry switched off).
import Testing
@testable import BareMetalKit

struct MPStartupPlanTests {
    func configuration(_ fixtureName: String) throws -> MPConfiguration {
        let fixture = try MemoryFixture(fixtureName)
        let address = try #require(MPTable.findFloatingPointer(memory: fixture.memory))
        let pointer = try MPTable.floatingPointer(memory: fixture.memory, address: address)
        return try #require(try MPTable.configuration(memory: fixture.memory, floatingPointer: pointer))
    }

    @Test(arguments: [1, 2, 4, 8])
    func everyListedProcessorIsPlanned(cpus: Int) throws {
        let plan = ProcessorStartupPlan(multiprocessor: try configuration("qemu-7.2-microvm-smp\(cpus)"), bootAPICID: 0, limit: 64)
        #expect(plan.bootProcessor.apicID == 0)
        #expect(plan.applicationProcessors.map(\.apicID) == (1..<UInt32(cpus)).map { $0 })
        #expect(plan.applicationProcessors.map(\.index) == Array(1..<cpus))
        #expect(plan.skipped.isEmpty)
    }

    @Test func disabledEntriesAndTheLimitAreSkipped() throws {
        var table = try configuration("qemu-7.2-microvm-smp8")
        table.processors[3].isEnabled = false
        let plan = ProcessorStartupPlan(multiprocessor: table, bootAPICID: 0, limit: 4)
        #expect(plan.applicationProcessors.map(\.apicID) == [1, 2, 4])
        #expect(plan.skipped.map(\.apicID) == [3, 5, 6, 7])
        #expect(plan.skipped.map(\.reason) == [.disabled, .beyondLimit, .beyondLimit, .beyondLimit])
    }

    @Test func theBootProcessorIsFoundWhereverItIsListed() throws {
        var table = try configuration("qemu-7.2-microvm-smp4")
        table.processors.swapAt(0, 2)
        let plan = ProcessorStartupPlan(multiprocessor: table, bootAPICID: 2, limit: 64)
        #expect(plan.bootProcessor.apicID == 2)
        #expect(Set(plan.applicationProcessors.map(\.apicID)) == [0, 1, 3])
    }
}
