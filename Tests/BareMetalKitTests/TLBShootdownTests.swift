// TLBShootdown: the pure parts of the shootdown: which flush a range needs,
// how a CPU flushes everything given its CR4, the request's targets and the
// acknowledgement bookkeeping, the TSC deadline and the IPI's ICR word.
import Testing
@testable import BareMetalKit

@Suite struct TLBShootdownTests {
    // MARK: Range to flush

    @Test func onePageOrPartOfOneIsOneInvalidation() {
        #expect(TLBFlush.covering(start: 0x20_0000, byteCount: 4096) == .pages(first: 0x20_0000, count: 1))
        #expect(TLBFlush.covering(start: 0x20_0123, byteCount: 1) == .pages(first: 0x20_0000, count: 1))
        #expect(TLBFlush.covering(start: 0x20_0FFF, byteCount: 1) == .pages(first: 0x20_0000, count: 1))
    }

    @Test func unalignedRangesCoverEveryPageTheyTouch() {
        // Two bytes straddling a page boundary touch two pages.
        #expect(TLBFlush.covering(start: 0x20_0FFF, byteCount: 2) == .pages(first: 0x20_0000, count: 2))
        // 4096 bytes from the middle of a page touch two.
        #expect(TLBFlush.covering(start: 0x20_0800, byteCount: 4096) == .pages(first: 0x20_0000, count: 2))
        #expect(TLBFlush.covering(start: 0x1000, byteCount: 3 * 4096) == .pages(first: 0x1000, count: 3))
    }

    @Test func anEmptyRangeFlushesNothing() {
        #expect(TLBFlush.covering(start: 0x1000, byteCount: 0) == .nothing)
        #expect(TLBFlush.covering(start: 0x1000, byteCount: 0).isNothing)
        #expect(TLBFlush.nothing.pageCount == 0)
    }

    @Test func aboveTheThresholdEverythingIsFlushed() {
        let threshold = TLBFlush.defaultPageThreshold
        #expect(threshold == 32)
        #expect(TLBFlush.covering(start: 0x40_0000, byteCount: threshold * 4096) == .pages(first: 0x40_0000, count: threshold))
        #expect(TLBFlush.covering(start: 0x40_0000, byteCount: (threshold + 1) * 4096) == .everything)
        // 32 pages' worth of bytes that start mid-page touch 33 pages.
        #expect(TLBFlush.covering(start: 0x40_0010, byteCount: threshold * 4096) == .everything)
        #expect(TLBFlush.covering(start: 0x40_0000, byteCount: 64 * 4096) == .everything)
        #expect(TLBFlush.everything.pageCount == 0)
        // The threshold is a parameter.
        #expect(TLBFlush.covering(start: 0, byteCount: 5 * 4096, pageThreshold: 4) == .everything)
        #expect(TLBFlush.covering(start: 0, byteCount: 4 * 4096, pageThreshold: 4) == .pages(first: 0, count: 4))
    }

    @Test func aRangeThatWrapsFlushesEverything() {
        #expect(TLBFlush.covering(start: UInt64.max - 4095, byteCount: 8192) == .everything)
        #expect(TLBFlush.covering(start: 0x1000, byteCount: UInt64.max) == .everything)
        // The very last page of the address space is fine.
        #expect(TLBFlush.covering(start: UInt64.max - 4095, byteCount: 4096) == .pages(first: UInt64.max - 4095, count: 1))
    }

    @Test func higherHalfAddressesKeepTheirBits() {
        let kernel: UInt64 = 0xFFFF_8000_0010_0000
        #expect(TLBFlush.covering(start: kernel, byteCount: 2 * 4096) == .pages(first: kernel, count: 2))
    }

    // MARK: Full flush and global pages

    @Test func withoutGlobalPagesACR3ReloadIsEnough() {
        // PAE | OSFXSR | OSXMMEXCPT: what entry.S sets.
        let cr4: UInt64 = 1 << 5 | 1 << 9 | 1 << 10
        #expect(TLBFullFlushMethod(controlRegister4: cr4) == .reloadCR3)
    }

    @Test func withGlobalPagesCR4PGEIsToggled() {
        let cr4: UInt64 = 1 << 5 | 1 << 7 | 1 << 9 | 1 << 16
        #expect(TLBFullFlushMethod(controlRegister4: cr4) == .toggleGlobalPages(restoring: cr4))
        #expect(TLBFullFlushMethod.globalPagesEnable == 0x80)
    }

    // MARK: Targets and acknowledgements

    @Test func processorSets() {
        #expect(ProcessorSet.first(0).isEmpty)
        #expect(ProcessorSet.first(1).bits == 1)
        #expect(ProcessorSet.first(4).bits == 0xF)
        #expect(ProcessorSet.first(64).bits == UInt64.max)
        #expect(ProcessorSet.first(65).bits == UInt64.max)
        var set = ProcessorSet.first(8).removing(0)
        #expect(set.count == 7)
        #expect(set.lowest == 1)
        #expect(set.indexes == [1, 2, 3, 4, 5, 6, 7])
        set.remove(1)
        set.remove(99)
        set.insert(63)
        set.insert(-1)
        #expect(set.indexes == [2, 3, 4, 5, 6, 7, 63])
        #expect(set.contains(63) && !set.contains(64) && !set.contains(-1))
        #expect(ProcessorSet().lowest == nil)
    }

    @Test func everyOnlineCPUButTheInitiatorIsATarget() {
        let request = TLBShootdownRequest(sequence: 1, initiator: 2, flush: .pages(first: 0x1000, count: 1), online: .first(4))
        #expect(request.targets.indexes == [0, 1, 3])
        #expect(request.needsInterprocessorInterrupts)
    }

    @Test func aLoneCPUOrAnEmptyFlushSendsNoInterrupt() {
        let alone = TLBShootdownRequest(sequence: 1, initiator: 0, flush: .everything, online: .first(1))
        #expect(alone.targets.isEmpty)
        #expect(!alone.needsInterprocessorInterrupts)
        #expect(TLBShootdownRound(request: alone).isComplete)
        let empty = TLBShootdownRequest(sequence: 2, initiator: 0, flush: .nothing, online: .first(4))
        #expect(!empty.needsInterprocessorInterrupts)
        var round = TLBShootdownRound(request: empty)
        #expect(round.isComplete)
        #expect(round.acknowledge(1) == .notTargeted)
    }

    @Test func aRoundCompletesWhenEveryTargetAcknowledged() {
        let request = TLBShootdownRequest(sequence: 7, initiator: 0, flush: .everything, online: .first(4))
        var round = TLBShootdownRound(request: request)
        #expect(!round.isComplete)
        #expect(round.firstMissing == 1)
        #expect(round.acknowledge(2) == .accepted)
        #expect(round.firstMissing == 1)
        #expect(round.acknowledge(1) == .accepted)
        #expect(round.firstMissing == 3)
        #expect(!round.isComplete)
        #expect(round.acknowledge(3) == .accepted)
        #expect(round.isComplete)
        #expect(round.firstMissing == nil)
    }

    @Test func duplicateAndForeignAcknowledgementsChangeNothing() {
        let request = TLBShootdownRequest(sequence: 3, initiator: 1, flush: .pages(first: 0, count: 2), online: .first(3))
        var round = TLBShootdownRound(request: request)
        #expect(round.acknowledge(1) == .notTargeted)  // the initiator itself
        #expect(round.acknowledge(5) == .notTargeted)  // not online
        #expect(round.acknowledge(0) == .accepted)
        #expect(round.acknowledge(0) == .duplicate)  // IPI and poll both answered
        #expect(round.pending.indexes == [2])
        #expect(round.firstMissing == 2)
    }

    @Test func theSixtyFourthCPUIsCountedToo() {
        let request = TLBShootdownRequest(sequence: 1, initiator: 0, flush: .everything, online: .first(64))
        var round = TLBShootdownRound(request: request)
        #expect(round.pending.count == 63)
        for cpu in 1..<63 { #expect(round.acknowledge(cpu) == .accepted) }
        #expect(round.firstMissing == 63)
        #expect(round.acknowledge(63) == .accepted)
        #expect(round.isComplete)
    }

    // MARK: Timeout

    @Test func theDeadlineIsTheTimeoutInTSCTicks() {
        let deadline = TSCDeadline(now: 1_000, microseconds: 5_000_000, ticksPerMicrosecond: 3_000)
        #expect(deadline.tsc == 1_000 + 15_000_000_000)
        #expect(!deadline.hasPassed(at: 1_000 + 15_000_000_000))
        #expect(deadline.hasPassed(at: 1_000 + 15_000_000_001))
        // An uncalibrated TSC rate of 0 counts as 1 tick per microsecond.
        #expect(TSCDeadline(now: 0, microseconds: 10, ticksPerMicrosecond: 0).tsc == 10)
    }

    @Test func aDeadlineNearTheTSCLimitSaturates() {
        let late = TSCDeadline(now: UInt64.max - 10, microseconds: 5_000_000, ticksPerMicrosecond: 3_000)
        #expect(late.tsc == UInt64.max)
        #expect(!late.hasPassed(at: UInt64.max))
        let huge = TSCDeadline(now: 0, microseconds: UInt64.max / 2, ticksPerMicrosecond: 4)
        #expect(huge.tsc == UInt64.max)
    }

    // MARK: The IPI

    @Test func theShootdownVectorIsItsOwn() {
        let vector = InterruptVectors.tlbShootdown
        #expect(vector == 0xF2)
        #expect(!InterruptVectors.isDevice(vector) && !InterruptVectors.isLegacyPIC(vector))
        #expect(Set([InterruptVectors.timer, InterruptVectors.wakeup, InterruptVectors.apicError, InterruptVectors.spurious]).contains(vector) == false)
        var allocator = InterruptVectorAllocator()
        while let next = try? allocator.allocate() { #expect(next != vector) }
    }

    @Test func theShootdownCommandWord() {
        // Fixed delivery (000), physical, assert, edge, no shorthand, vector 0xF2.
        let command = InterruptCommand.tlbShootdown(apicID: 3)
        #expect(command.low == 0x0000_40F2)
        #expect(command.xAPICHigh == 3 << 24)
        #expect(command.x2APICValue == 3 << 32 | 0x40F2)
        let far = InterruptCommand.tlbShootdown(apicID: 0x1_0000)
        #expect(far.x2APICValue >> 32 == 0x1_0000)
    }
}
