// Tests of the time core: pvclock-style tick scaling, the deadline queue
// against a sorted reference model, and CMOS RTC decoding to Unix time.
import Foundation
import Testing
@testable import BareMetalKit

struct TickScaleTests {
    @Test(arguments: [1_193_182, 3_579_545, 14_318_180, 100_000_000, 1_000_000_000, 2_095_071_000, 3_600_000_000, 1, 999_999_999, 1 << 40] as [UInt64])
    func scaleIsPreciseAndInvertible(hertz: UInt64) throws {
        let scale = try #require(TickScale(ticksPerSecond: hertz))
        #expect(scale.multiplier >= 1 << 31)
        // One second of ticks is one second, within one part in 2^31 (plus one tick's worth).
        let second = scale.nanoseconds(ticks: hertz)
        let tolerance = 1 + 1_000_000_000 / hertz + 1
        #expect(second <= 1_000_000_000 + tolerance && second + tolerance >= 1_000_000_000, "\(second)")
        // ticks(nanoseconds:) is the least tick count that reaches the time.
        for nanoseconds: UInt64 in [1, 999, 1_000_000, 123_456_789, 3_600_000_000_000] {
            let ticks = scale.ticks(nanoseconds: nanoseconds)
            #expect(scale.nanoseconds(ticks: ticks) >= nanoseconds)
            if ticks > 0 { #expect(scale.nanoseconds(ticks: ticks - 1) < nanoseconds || scale.shift < 0) }
        }
        let frequency = scale.ticksPerSecond
        #expect(frequency <= hertz + hertz / (1 << 30) + 2 && frequency + hertz / (1 << 30) + 2 >= hertz)
    }

    @Test func knownKVMClockValues() {
        // A 2.095 GHz TSC as kvmclock publishes it: mul 0x7A2B_5D6B? Check the math instead:
        // with shift -1 and mul m, ns = ((t >> 1) * m) >> 32.
        let scale = TickScale(multiplier: 0x8000_0000, shift: 1)  // 1 tick = 1 ns exactly
        #expect(scale.nanoseconds(ticks: 123_456_789) == 123_456_789)
        let half = TickScale(multiplier: 0x8000_0000, shift: 0)  // 2 ticks per ns
        #expect(half.nanoseconds(ticks: 1000) == 500)
        let quarter = TickScale(multiplier: 0x8000_0000, shift: -1)
        #expect(quarter.nanoseconds(ticks: 1000) == 250)
        #expect(TickScale(ticksPerSecond: 1_000_000_000) == TickScale(multiplier: 0x8000_0000, shift: 1))
        #expect(TickScale(ticksPerSecond: 2_000_000_000) == TickScale(multiplier: 0x8000_0000, shift: 0))
        #expect(TickScale(ticksPerSecond: 0) == nil)
        // Large tick counts do not overflow the 64-bit product: ten years of a 3 GHz TSC.
        let tsc = TickScale(ticksPerSecond: 3_000_000_000)!
        let tenYears: UInt64 = 10 * 365 * 86_400
        let nanoseconds = tsc.nanoseconds(ticks: tenYears * 3_000_000_000)
        #expect(nanoseconds / 1_000_000_000 >= tenYears - 1 && nanoseconds / 1_000_000_000 <= tenYears)
    }

    @Test func calibrationFromAReferenceInterval() throws {
        // 10 ms of the PIT measured 29_876_543 TSC ticks: about 2.988 GHz.
        let scale = try #require(TickScale(ticks: 29_876_543, overNanoseconds: 10_000_000))
        #expect(scale.ticksPerSecond / 1000 == 2_987_654)
        #expect(TickScale(ticks: 5, overNanoseconds: 0) == nil)
    }

    @Test func pvclockRecordLayout() {
        var bytes = [UInt8](repeating: 0, count: 32)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            for index in 0..<T.bitWidth / 8 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
        }
        put(UInt32(6), at: 0)
        put(UInt64(1_000_000), at: 8)
        put(UInt64(5_000_000_000), at: 16)
        put(UInt32(0x8000_0000), at: 24)
        put(Int8(1), at: 28)
        put(UInt8(1), at: 29)
        let record = bytes.withUnsafeBytes { PVClockTimeInfo(from: $0.baseAddress!) }
        #expect(record == PVClockTimeInfo(
            version: 6, tscTimestamp: 1_000_000, systemTime: 5_000_000_000,
            scale: TickScale(multiplier: 0x8000_0000, shift: 1), flags: 1))
        #expect(record.isConsistent)
        #expect(record.nanoseconds(atTSC: 1_000_500) == 5_000_000_500)
        var updating = record
        updating.version = 7
        #expect(!updating.isConsistent)
    }

    @Test func counterClockRoundTrips() throws {
        let clock = CounterClock(scale: try #require(TickScale(ticksPerSecond: 2_500_000_000)), originTicks: 1_000, originNanoseconds: 42)
        #expect(clock.nanoseconds(atTicks: 1_000) == 42)
        let oneSecond = clock.nanoseconds(atTicks: 1_000 + 2_500_000_000)
        #expect(oneSecond >= 1_000_000_041 && oneSecond <= 1_000_000_042)  // truncation: at most 1 ns short
        let deadline = clock.ticks(atNanoseconds: 1_000_000_042)
        #expect(clock.nanoseconds(atTicks: deadline) >= 1_000_000_042)
        #expect(clock.nanoseconds(atTicks: deadline - 3) < 1_000_000_042)
        #expect(clock.ticks(atNanoseconds: 0) == 1_000)
    }
}

struct DeadlineQueueTests {
    @Test func firesInDeadlineOrderAndFIFOOnTies() {
        var queue = DeadlineQueue<String>()
        queue.schedule("c", at: 300)
        queue.schedule("a1", at: 100)
        queue.schedule("b", at: 200)
        queue.schedule("a2", at: 100)
        #expect(queue.nextDeadline == 100)
        do {
            let result = queue.popExpired(now: 99)
            #expect(result == nil)
        }
        do {
            let result = queue.popExpired(now: 100)
            #expect(result?.payload == "a1")
        }
        do {
            let result = queue.popExpired(now: 100)
            #expect(result?.payload == "a2")
        }
        do {
            let result = queue.popExpired(now: 100)
            #expect(result == nil)
        }
        do {
            let result = queue.popExpired(now: 1000)
            #expect(result?.payload == "b")
        }
        do {
            let result = queue.popExpired(now: 1000)
            #expect(result?.payload == "c")
        }
        #expect(queue.isEmpty && queue.nextDeadline == nil)
    }

    @Test func cancelAndRescheduleUseStableHandles() {
        var queue = DeadlineQueue<Int>()
        let first = queue.schedule(1, at: 50)
        let second = queue.schedule(2, at: 60)
        do {
            let result = queue.cancel(first)
            #expect(result == 1)
        }
        do {
            let result = queue.cancel(first)
            #expect(result == nil)
        }
        #expect(!queue.contains(first))
        // The freed slot is reused; the old handle must not reach the new entry.
        let third = queue.schedule(3, at: 10)
        do {
            let result = queue.cancel(first)
            #expect(result == nil)
        }
        do {
            let result = queue.reschedule(second, to: 5)
            #expect(result)
        }
        #expect(queue.deadline(of: second) == 5)
        do {
            let result = queue.popExpired(now: 100)
            #expect(result?.payload == 2)
        }
        let movedAfterFiring = queue.reschedule(second, to: 1)
        #expect(!movedAfterFiring)
        do {
            let result = queue.popExpired(now: 100)
            #expect(result?.handle == third)
        }
    }

    /// Random schedule/cancel/reschedule/pop against a sorted array.
    @Test(arguments: [31, 32, 33] as [UInt64])
    func randomizedAgainstReferenceModel(seed: UInt64) {
        var generator = SplitMixRandom(seed: seed)
        var queue = DeadlineQueue<Int>()
        var model: [(deadline: UInt64, sequence: Int, id: Int, handle: TimerHandle)] = []
        var sequence = 0
        var now: UInt64 = 0
        for id in 0..<3000 {
            switch generator.next() % 10 {
            case 0..<5:
                let deadline = now + generator.next() % 1000
                let handle = queue.schedule(id, at: deadline)
                model.append((deadline, sequence, id, handle))
                sequence += 1
            case 5, 6:
                guard !model.isEmpty else { continue }
                let index = Int(generator.next() % UInt64(model.count))
                do {
                    let result = queue.cancel(model[index].handle)
                    #expect(result == model[index].id)
                }
                model.remove(at: index)
            case 7:
                guard !model.isEmpty else { continue }
                let index = Int(generator.next() % UInt64(model.count))
                let deadline = now + generator.next() % 1000
                do {
                    let result = queue.reschedule(model[index].handle, to: deadline)
                    #expect(result)
                }
                model[index].deadline = deadline
                model[index].sequence = sequence
                sequence += 1
            default:
                now += generator.next() % 300
                model.sort { ($0.deadline, $0.sequence) < ($1.deadline, $1.sequence) }
                while let fired = queue.popExpired(now: now) {
                    let expected = model.removeFirst()
                    #expect(fired.payload == expected.id)
                    #expect(fired.deadline == expected.deadline && fired.deadline <= now)
                }
                #expect(model.first.map { $0.deadline > now } ?? true)
            }
            #expect(queue.count == model.count)
            #expect(queue.nextDeadline == model.map(\.deadline).min())
        }
    }
}

struct RealTimeClockTests {
    @Test func bcdTwentyFourHour() throws {
        // 2026-11-25 16:34:07 in BCD, 24-hour mode (status B 0x02), century 0x20.
        let reading = RealTimeClockReading(seconds: 0x07, minutes: 0x34, hours: 0x16, dayOfMonth: 0x25, month: 0x11,
            year: 0x26, century: 0x20, statusB: 0x02)
        #expect(try reading.unixTime() == 1_795_624_447)
    }

    @Test func binaryTwelveHour() throws {
        // Binary mode (bit 2), 12-hour: 12 AM is midnight, 12 PM noon, bit 7 PM.
        func time(_ hours: UInt8) throws -> Int64 {
            try RealTimeClockReading(seconds: 0, minutes: 0, hours: hours, dayOfMonth: 1, month: 1, year: 0,
                statusB: 0x04).unixTime()
        }
        let midnight: Int64 = 946_684_800  // 2000-01-01
        #expect(try time(12) == midnight)
        #expect(try time(1) == midnight + 3600)
        #expect(try time(0x80 | 12) == midnight + 12 * 3600)
        #expect(try time(0x80 | 11) == midnight + 23 * 3600)
        #expect(throws: RealTimeClockError.outOfRange(register: 0x04, value: 0)) { try time(0) }
        // BCD 12-hour: 0x91 is 11 PM.
        let bcd = RealTimeClockReading(seconds: 0x59, minutes: 0x59, hours: 0x91, dayOfMonth: 0x31, month: 0x12,
            year: 0x99, statusB: 0x00)
        #expect(try bcd.unixTime() == 946_684_799)  // 1999-12-31 23:59:59
    }

    @Test func matchesFoundationForManyDates() throws {
        var generator = SplitMixRandom(seed: 41)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        for _ in 0..<500 {
            let year = 1970 + Int(generator.next() % 200)
            let month = 1 + Int(generator.next() % 12)
            let day = 1 + Int(generator.next() % 28) + (month == 2 ? 0 : Int(generator.next() % 3))
            let hour = Int(generator.next() % 24), minute = Int(generator.next() % 60), second = Int(generator.next() % 60)
            let components = DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second)
            let expected = Int64(calendar.date(from: components)!.timeIntervalSince1970)
            let reading = RealTimeClockReading(seconds: UInt8(second), minutes: UInt8(minute), hours: UInt8(hour),
                dayOfMonth: UInt8(day), month: UInt8(month), year: UInt8(year % 100), century: UInt8(year / 100),
                statusB: 0x06)
            #expect(try reading.unixTime() == expected, "\(components)")
        }
    }

    @Test func invalidReadingsAreRejected() {
        #expect(throws: RealTimeClockError.invalidBCD(register: 0x02, value: 0x5A)) {
            try RealTimeClockReading(seconds: 0, minutes: 0x5A, hours: 0, dayOfMonth: 1, month: 1, year: 0, statusB: 0x02).unixTime()
        }
        #expect(throws: RealTimeClockError.outOfRange(register: 0x07, value: 0x29)) {
            try RealTimeClockReading(seconds: 0, minutes: 0, hours: 0, dayOfMonth: 0x29, month: 0x02, year: 0x23, statusB: 0x02).unixTime()
        }
        #expect(throws: RealTimeClockError.outOfRange(register: 0x08, value: 13)) {
            try RealTimeClockReading(seconds: 0, minutes: 0, hours: 0, dayOfMonth: 1, month: 13, year: 1, statusB: 0x06).unixTime()
        }
        // 2024 is a leap year: February 29 is fine.
        #expect((try? RealTimeClockReading(seconds: 0, minutes: 0, hours: 0, dayOfMonth: 0x29, month: 0x02, year: 0x24, statusB: 0x02).unixTime()) == 1_709_164_800)
    }

    /// A CMOS model: index port 0x70, data port 0x71, an update in progress
    /// for the first reads, and a seconds tick between two snapshots.
    struct CMOSModel: PortIO {
        var registers = [UInt8](repeating: 0, count: 128)
        var index: UInt8 = 0
        var busyReads = 3
        var readsUntilTick = 9
        var trace: [UInt8] = []

        mutating func read8(_ port: UInt16) -> UInt8 {
            guard port == 0x71 else { return 0xFF }
            trace.append(index)
            if index == 0x0A {
                if busyReads > 0 {
                    busyReads -= 1
                    return 0x80
                }
                return 0x26
            }
            readsUntilTick -= 1
            if readsUntilTick == 0 { registers[0] += 1 }
            return registers[Int(index)]
        }
        mutating func write8(_ port: UInt16, _ value: UInt8) { if port == 0x70 { index = value } }
        mutating func write32(_ port: UInt16, _ value: UInt32) {}
    }

    @Test func consistentReadThroughPorts() throws {
        var model = CMOSModel()
        model.registers[0x00] = 0x30
        model.registers[0x02] = 0x15
        model.registers[0x04] = 0x09
        model.registers[0x07] = 0x04
        model.registers[0x08] = 0x07
        model.registers[0x09] = 0x26
        model.registers[0x32] = 0x20
        model.registers[0x0B] = 0x02
        var clock = CMOSRealTimeClock(ports: model, centuryRegister: 0x32)
        let reading = try clock.read()
        // The seconds changed during the first pair of snapshots; the second pair agrees.
        #expect(reading.seconds == 0x31)
        #expect(try reading.unixTime() == 1_783_156_531)  // 2026-07-04 09:15:31
        #expect(clock.ports.trace.filter { $0 == 0x0A }.count >= 4 + 3)
    }
}
