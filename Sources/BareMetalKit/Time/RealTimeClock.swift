// RealTimeClock: the PC CMOS real-time clock (Motorola MC146818A data
// sheet: registers 0x00 seconds, 0x02 minutes, 0x04 hours, 0x07 day of
// month, 0x08 month, 0x09 year, status A bit 7 UIP, status B bit 1 24-hour
// and bit 2 binary mode; the century register's index from the ACPI FADT),
// decoded to Unix time.

/// Why an RTC reading could not be turned into a time.
public enum RealTimeClockError: Error, Equatable {
    /// A register in BCD mode held a non-decimal nibble.
    case invalidBCD(register: UInt8, value: UInt8)
    /// A decoded field is outside its range.
    case outOfRange(register: UInt8, value: UInt8)
    /// The clock kept changing while it was read.
    case unstable
}

/// One reading of the RTC's time registers.
public struct RealTimeClockReading: Equatable, Sendable {
    public var seconds: UInt8
    public var minutes: UInt8
    public var hours: UInt8
    public var dayOfMonth: UInt8
    public var month: UInt8
    public var year: UInt8
    /// The century register's value, when the FADT names one.
    public var century: UInt8?
    /// Status register B (bit 1: 24-hour mode; bit 2: binary, not BCD).
    public var statusB: UInt8

    public init(seconds: UInt8, minutes: UInt8, hours: UInt8, dayOfMonth: UInt8, month: UInt8, year: UInt8,
        century: UInt8? = nil, statusB: UInt8)
    {
        self.seconds = seconds
        self.minutes = minutes
        self.hours = hours
        self.dayOfMonth = dayOfMonth
        self.month = month
        self.year = year
        self.century = century
        self.statusB = statusB
    }

    public var isBinary: Bool { statusB & (1 << 2) != 0 }
    public var is24Hour: Bool { statusB & (1 << 1) != 0 }

    func decode(_ value: UInt8, register: UInt8) throws(RealTimeClockError) -> Int {
        if isBinary { return Int(value) }
        guard value & 0xF <= 9, value >> 4 <= 9 else { throw .invalidBCD(register: register, value: value) }
        return Int(value >> 4) * 10 + Int(value & 0xF)
    }

    /// Seconds since 1970-01-01 00:00:00 UTC (the RTC is assumed to keep
    /// UTC, as QEMU's does by default). Without a century register, years
    /// 70–99 are 19xx and 00–69 are 20xx.
    public func unixTime() throws(RealTimeClockError) -> Int64 {
        let second = try decode(seconds, register: 0x00)
        let minute = try decode(minutes, register: 0x02)
        var hour: Int
        if is24Hour {
            hour = try decode(hours, register: 0x04)
        } else {
            // 12-hour mode: bit 7 is PM; 12 AM is midnight, 12 PM is noon.
            let clock = try decode(hours & 0x7F, register: 0x04)
            guard clock >= 1, clock <= 12 else { throw .outOfRange(register: 0x04, value: hours) }
            hour = clock % 12 + (hours & 0x80 != 0 ? 12 : 0)
        }
        let day = try decode(dayOfMonth, register: 0x07)
        let monthValue = try decode(month, register: 0x08)
        let yearInCentury = try decode(year, register: 0x09)
        var fullYear: Int
        if let century {
            fullYear = try decode(century, register: 0x32) * 100 + yearInCentury
        } else {
            fullYear = yearInCentury + (yearInCentury >= 70 ? 1900 : 2000)
        }
        guard second <= 59 else { throw .outOfRange(register: 0x00, value: seconds) }
        guard minute <= 59 else { throw .outOfRange(register: 0x02, value: minutes) }
        guard hour <= 23 else { throw .outOfRange(register: 0x04, value: hours) }
        guard monthValue >= 1, monthValue <= 12 else { throw .outOfRange(register: 0x08, value: month) }
        guard yearInCentury <= 99 else { throw .outOfRange(register: 0x09, value: year) }
        guard day >= 1, day <= Self.daysInMonth(monthValue, year: fullYear) else {
            throw .outOfRange(register: 0x07, value: dayOfMonth)
        }
        let days = Self.daysSinceEpoch(year: fullYear, month: monthValue, day: day)
        return days * 86_400 + Int64(hour * 3600 + minute * 60 + second)
    }

    static func isLeap(_ year: Int) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    static func daysInMonth(_ month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to the given proleptic Gregorian date.
    /// Counts whole 400-year cycles (146097 days) from year 0, with March
    /// as the first month so the leap day ends the year.
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int64 {
        let shiftedYear = month <= 2 ? year - 1 : year
        let cycle = (shiftedYear >= 0 ? shiftedYear : shiftedYear - 399) / 400
        let yearOfCycle = shiftedYear - cycle * 400  // 0...399
        let monthFromMarch = (month + 9) % 12  // March = 0 ... February = 11
        let dayOfYear = (153 * monthFromMarch + 2) / 5 + day - 1  // 0...365
        let dayOfCycle = yearOfCycle * 365 + yearOfCycle / 4 - yearOfCycle / 100 + dayOfYear
        // 719468: days from 0000-03-01 to 1970-01-01.
        return Int64(cycle) * 146_097 + Int64(dayOfCycle) - 719_468
    }
}

/// Reads the CMOS RTC through I/O ports 0x70 (index) and 0x71 (data).
public struct CMOSRealTimeClock<Ports: PortIO> {
    public var ports: Ports
    /// CMOS index of the century register (FADT CENTURY), 0 for none.
    public var centuryRegister: UInt8

    public init(ports: Ports, centuryRegister: UInt8 = 0) {
        self.ports = ports
        self.centuryRegister = centuryRegister
    }

    mutating func register(_ index: UInt8) -> UInt8 {
        ports.write8(0x70, index)
        return ports.read8(0x71)
    }

    mutating func snapshot() -> RealTimeClockReading? {
        var spins = 0
        // Status A bit 7 (UIP): an update is under way; wait it out (bounded).
        while register(0x0A) & 0x80 != 0 {
            spins += 1
            if spins > 100_000 { return nil }
        }
        return RealTimeClockReading(
            seconds: register(0x00), minutes: register(0x02), hours: register(0x04), dayOfMonth: register(0x07),
            month: register(0x08), year: register(0x09), century: centuryRegister == 0 ? nil : register(centuryRegister),
            statusB: register(0x0B))
    }

    /// A reading taken twice in a row with the same result, so no update
    /// happened in between.
    public mutating func read() throws(RealTimeClockError) -> RealTimeClockReading {
        for _ in 0..<10 {
            guard let first = snapshot(), let second = snapshot() else { throw .unstable }
            if first == second { return first }
        }
        throw .unstable
    }
}
