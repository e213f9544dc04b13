// The libFuzzer harness (Fuzz/NetStackFuzz/FuzzHarness.swift, linked here)
// run as ordinary tests: its setup reaches an established connection, seeded
// random inputs pass through it, and every input libFuzzer found crashing
// (Scripts/fuzz-netstack) is replayed, one test per crash, after its fix.
import Testing
@testable import NetStack

@Suite struct FuzzRegressionTests {
    @Test func harnessSetupEstablishesAConnection() throws {
        let harness = try FuzzHarness()
        let connection = try #require(harness.connection)
        #expect(try harness.stack.state(of: connection) == .established)
        #expect(harness.stack.connectionCount == 1)
    }

    @Test func seededRandomInputsRunThroughTheHarness() throws {
        var random = SplitMix64(seed: 2026)
        for _ in 0..<300 {
            let length = Int(random.next() % 3000)
            let input = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            var harness = try FuzzHarness()
            harness.run(input)
            harness.checkBounds()
        }
    }
}
