// InterruptModel: the pure parts of the interrupt layer, shared by the guest
// and the host tests: the vector layout and allocator, I/O APIC redirection
// entries (82093AA datasheet §3.2.4), MSI address/data (Intel SDM vol. 3A
// §11.11.1–11.11.2), local APIC register offsets, LVT and ICR encodings
// (SDM vol. 3A §11.4–11.6, §11.12), and the ISA/GSI routing decisions from
// the ACPI MADT or the Intel MP table.

/// Why an interrupt-layer request failed.
public enum InterruptError: Error, Equatable, Sendable {
    /// No free vector (or no `count` consecutive aligned ones) is left.
    case noFreeVector(requested: Int)
    /// The vector is not in the device range or not allocated.
    case vectorNotAllocated(UInt8)
    /// A handler is already registered for this vector.
    case vectorBusy(UInt8)
    /// No I/O APIC handles this global system interrupt.
    case noIOAPIC(globalSystemInterrupt: UInt32)
    /// A GSI already has a handler (shared lines are not supported).
    case lineBusy(globalSystemInterrupt: UInt32)
    /// The interrupt layer is not running (no local APIC, or `start` not called).
    case notStarted
    /// The PCI function has no usable interrupt of the asked kind.
    case noInterrupt(reason: StaticString)
    /// A PCI structure needed for MSI/MSI-X is malformed.
    case pci(PCIError)

    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.noFreeVector(let a), .noFreeVector(let b)): a == b
        case (.vectorNotAllocated(let a), .vectorNotAllocated(let b)): a == b
        case (.vectorBusy(let a), .vectorBusy(let b)): a == b
        case (.noIOAPIC(let a), .noIOAPIC(let b)): a == b
        case (.lineBusy(let a), .lineBusy(let b)): a == b
        case (.notStarted, .notStarted): true
        case (.noInterrupt, .noInterrupt): true
        case (.pci(let a), .pci(let b)): a == b
        default: false
        }
    }
}

/// The guest's use of the 256 IDT vectors.
public enum InterruptVectors {
    /// 0x20–0x2F: the legacy 8259 PICs after the remap (all masked; only
    /// their spurious IRQ 7 / IRQ 15 can still arrive, at 0x27 and 0x2F).
    public static var legacyPICBase: UInt8 { 0x20 }
    /// 0x30–0xDF: handed out to devices (I/O APIC lines, MSI, MSI-X).
    public static var firstDevice: UInt8 { 0x30 }
    public static var lastDevice: UInt8 { 0xDF }
    /// The local APIC timer (highest priority class of the ordinary ones).
    public static var timer: UInt8 { 0xF0 }
    /// Inter-processor wake-up (SMP), also used as a self-test IPI.
    public static var wakeup: UInt8 { 0xF1 }
    /// TLB shootdown (SMP): drop the TLB entries another CPU's change of the
    /// kernel page tables made stale, then acknowledge.
    public static var tlbShootdown: UInt8 { 0xF2 }
    /// LVT error.
    public static var apicError: UInt8 { 0xFE }
    /// The spurious-interrupt vector (SVR); its low four bits are 1s as
    /// older APICs require. Never EOI'd.
    public static var spurious: UInt8 { 0xFF }

    public static func isLegacyPIC(_ vector: UInt8) -> Bool { vector >= 0x20 && vector < 0x30 }
    public static func isDevice(_ vector: UInt8) -> Bool { vector >= firstDevice && vector <= lastDevice }
}

/// Hands out device vectors (0x30–0xDF); multi-message MSI needs `count`
/// consecutive vectors aligned to `count` (a power of two).
public struct InterruptVectorAllocator: Sendable {
    /// One bit per vector 0–255.
    var used: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init() {}

    public func isAllocated(_ vector: UInt8) -> Bool {
        let word = Int(vector >> 6)
        let bit = UInt64(1) << UInt64(vector & 63)
        switch word {
        case 0: return used.0 & bit != 0
        case 1: return used.1 & bit != 0
        case 2: return used.2 & bit != 0
        default: return used.3 & bit != 0
        }
    }

    mutating func set(_ vector: UInt8, _ value: Bool) {
        let bit = UInt64(1) << UInt64(vector & 63)
        switch vector >> 6 {
        case 0: used.0 = value ? used.0 | bit : used.0 & ~bit
        case 1: used.1 = value ? used.1 | bit : used.1 & ~bit
        case 2: used.2 = value ? used.2 | bit : used.2 & ~bit
        default: used.3 = value ? used.3 | bit : used.3 & ~bit
        }
    }

    /// Allocates `count` consecutive vectors (a power of two up to 32)
    /// whose first is a multiple of `count`, lowest first; returns the first.
    public mutating func allocate(count: Int = 1) throws(InterruptError) -> UInt8 {
        guard count >= 1, count <= 32, count & (count - 1) == 0 else { throw .noFreeVector(requested: count) }
        var first = Int(InterruptVectors.firstDevice)
        while first % count != 0 { first += 1 }
        while first + count - 1 <= Int(InterruptVectors.lastDevice) {
            var free = true
            for vector in first..<(first + count) where isAllocated(UInt8(vector)) {
                free = false
                break
            }
            if free {
                for vector in first..<(first + count) { set(UInt8(vector), true) }
                return UInt8(first)
            }
            first += count
        }
        throw .noFreeVector(requested: count)
    }

    /// Returns `count` vectors starting at `first`.
    public mutating func free(_ first: UInt8, count: Int = 1) throws(InterruptError) {
        for offset in 0..<count {
            let vector = Int(first) + offset
            guard vector <= 255, InterruptVectors.isDevice(UInt8(vector)), isAllocated(UInt8(vector)) else {
                throw .vectorNotAllocated(UInt8(truncatingIfNeeded: vector))
            }
        }
        for offset in 0..<count { set(first + UInt8(offset), false) }
    }

    /// Vectors in use.
    public var allocatedCount: Int {
        used.0.nonzeroBitCount + used.1.nonzeroBitCount + used.2.nonzeroBitCount + used.3.nonzeroBitCount
    }
}

/// Delivery modes shared by I/O APIC entries, MSI data and the ICR.
public enum InterruptDeliveryMode: UInt8, Sendable {
    case fixed = 0
    case lowestPriority = 1
    case smi = 2
    case nmi = 4
    case initialize = 5
    case startup = 6
    case externalInterrupt = 7
}

/// One I/O APIC redirection table entry (82093AA §3.2.4): vector 7:0,
/// delivery mode 10:8, destination mode 11 (0 physical), delivery status 12
/// (read-only), polarity 13 (1 active low), remote IRR 14 (read-only),
/// trigger 15 (1 level), mask 16, destination 63:56.
public struct IOAPICRedirectionEntry: Equatable, Sendable {
    public var vector: UInt8
    public var deliveryMode: InterruptDeliveryMode = .fixed
    public var logicalDestination = false
    public var activeLow = false
    public var levelTriggered = false
    public var masked = true
    public var destination: UInt8 = 0
    /// Read-only status bits as last read (ignored when encoding).
    public var deliveryPending = false
    public var remoteIRR = false

    public init(
        vector: UInt8, deliveryMode: InterruptDeliveryMode = .fixed, activeLow: Bool = false, levelTriggered: Bool = false,
        masked: Bool = true, destination: UInt8 = 0
    ) {
        self.vector = vector
        self.deliveryMode = deliveryMode
        self.activeLow = activeLow
        self.levelTriggered = levelTriggered
        self.masked = masked
        self.destination = destination
    }

    /// Low dword (register 0x10 + 2 × pin).
    public var low: UInt32 {
        var value = UInt32(vector) | UInt32(deliveryMode.rawValue) << 8
        if logicalDestination { value |= 1 << 11 }
        if activeLow { value |= 1 << 13 }
        if levelTriggered { value |= 1 << 15 }
        if masked { value |= 1 << 16 }
        return value
    }

    /// High dword (register 0x11 + 2 × pin).
    public var high: UInt32 { UInt32(destination) << 24 }

    /// Decodes a read entry; nil for reserved delivery modes.
    public init?(low: UInt32, high: UInt32) {
        guard let mode = InterruptDeliveryMode(rawValue: UInt8((low >> 8) & 7)) else { return nil }
        vector = UInt8(truncatingIfNeeded: low)
        deliveryMode = mode
        logicalDestination = low & (1 << 11) != 0
        deliveryPending = low & (1 << 12) != 0
        activeLow = low & (1 << 13) != 0
        remoteIRR = low & (1 << 14) != 0
        levelTriggered = low & (1 << 15) != 0
        masked = low & (1 << 16) != 0
        destination = UInt8(truncatingIfNeeded: high >> 24)
    }
}

/// An I/O APIC reached through its two registers (82093AA §3.1): IOREGSEL
/// at 0x00 selects, IOWIN at 0x10 reads or writes the selected register.
public struct IOAPIC<Registers: RegisterBlock> {
    public let registers: Registers
    /// First GSI of this I/O APIC (from the MADT).
    public let globalSystemInterruptBase: UInt32

    /// 0x00 IOREGSEL, 0x10 IOWIN
    static var registerSelect: Int { 0x00 }
    static var window: Int { 0x10 }
    /// Register 0x00 IOAPICID, 0x01 IOAPICVER, 0x10 + 2n redirection table.
    static var identification: UInt8 { 0x00 }
    static var version: UInt8 { 0x01 }
    static var redirectionTable: UInt8 { 0x10 }

    public init(registers: Registers, globalSystemInterruptBase: UInt32) {
        self.registers = registers
        self.globalSystemInterruptBase = globalSystemInterruptBase
    }

    public func read(_ register: UInt8) -> UInt32 {
        registers.write32(at: Self.registerSelect, UInt32(register))
        return registers.read32(at: Self.window)
    }

    public func write(_ register: UInt8, _ value: UInt32) {
        registers.write32(at: Self.registerSelect, UInt32(register))
        registers.write32(at: Self.window, value)
    }

    /// IOAPICVER bits 23:16 (Maximum Redirection Entry) + 1.
    public var pinCount: Int { Int((read(Self.version) >> 16) & 0xFF) + 1 }

    public func entry(pin: Int) -> IOAPICRedirectionEntry? {
        let register = Self.redirectionTable + UInt8(2 * pin)
        return IOAPICRedirectionEntry(low: read(register), high: read(register + 1))
    }

    /// Writes an entry: masked first, then the destination, then the low
    /// dword (which carries the final mask bit), so the line never fires
    /// with a half-written entry.
    public func setEntry(pin: Int, _ entry: IOAPICRedirectionEntry) {
        let register = Self.redirectionTable + UInt8(2 * pin)
        write(register, read(register) | 1 << 16)
        write(register + 1, entry.high)
        write(register, entry.low)
    }

    public func setMasked(pin: Int, _ masked: Bool) {
        let register = Self.redirectionTable + UInt8(2 * pin)
        let low = read(register)
        write(register, masked ? low | 1 << 16 : low & ~(1 << 16))
    }

    /// Masks every pin (the state the guest starts from).
    public func maskAll() {
        for pin in 0..<pinCount { setMasked(pin: pin, true) }
    }
}

/// An MSI or MSI-X message (SDM vol. 3A §11.11): what the device writes,
/// and where, to raise `vector` on the local APIC `destination`.
public struct MSIMessage: Equatable, Sendable {
    public var address: UInt64
    public var data: UInt32

    /// Address 0xFEE00000 | destination ID 19:12 | RH 3 | DM 2; data:
    /// vector 7:0, delivery mode 10:8, level 14 (assert), trigger 15.
    public init(
        vector: UInt8, destination: UInt8 = 0, deliveryMode: InterruptDeliveryMode = .fixed, levelTriggered: Bool = false
    ) {
        address = 0xFEE0_0000 | UInt64(destination) << 12
        var data = UInt32(vector) | UInt32(deliveryMode.rawValue) << 8
        if levelTriggered { data |= 1 << 15 | 1 << 14 }
        self.data = data
    }

    public var vector: UInt8 { UInt8(truncatingIfNeeded: data) }
    public var destination: UInt8 { UInt8(truncatingIfNeeded: address >> 12) }
}

/// Local APIC registers (SDM vol. 3A Table 11-1): xAPIC MMIO offsets; the
/// x2APIC MSR of a register is 0x800 + offset / 16 (Table 11-6).
public enum LocalAPICRegister {
    /// 0x020 Local APIC ID
    public static var id: Int { 0x020 }
    /// 0x030 Local APIC Version
    public static var version: Int { 0x030 }
    /// 0x080 Task Priority
    public static var taskPriority: Int { 0x080 }
    /// 0x0B0 EOI
    public static var endOfInterrupt: Int { 0x0B0 }
    /// 0x0F0 Spurious Interrupt Vector
    public static var spuriousVector: Int { 0x0F0 }
    /// 0x100–0x170 In-Service (ISR), eight 32-bit registers
    public static var inService: Int { 0x100 }
    /// 0x280 Error Status
    public static var errorStatus: Int { 0x280 }
    /// 0x300 Interrupt Command (low), 0x310 (high; xAPIC only)
    public static var interruptCommandLow: Int { 0x300 }
    public static var interruptCommandHigh: Int { 0x310 }
    /// 0x320 LVT Timer
    public static var timerVector: Int { 0x320 }
    /// 0x350 LVT LINT0, 0x360 LVT LINT1
    public static var lint0: Int { 0x350 }
    public static var lint1: Int { 0x360 }
    /// 0x370 LVT Error
    public static var errorVector: Int { 0x370 }
    /// 0x380 Timer Initial Count, 0x390 Current Count, 0x3E0 Divide Configuration
    public static var timerInitialCount: Int { 0x380 }
    public static var timerCurrentCount: Int { 0x390 }
    public static var timerDivide: Int { 0x3E0 }

    /// The x2APIC MSR for an xAPIC offset.
    public static func msr(_ offset: Int) -> UInt32 { 0x800 + UInt32(offset >> 4) }
}

/// LVT timer modes (SDM vol. 3A §11.5.4, bits 18:17).
public enum LocalAPICTimerMode: UInt32, Sendable {
    case oneShot = 0
    case periodic = 1
    case tscDeadline = 2

    /// The LVT timer register value for `vector` in this mode.
    public func lvt(vector: UInt8, masked: Bool = false) -> UInt32 {
        UInt32(vector) | rawValue << 17 | (masked ? 1 << 16 : 0)
    }

    /// The one-shot initial count for `ticks` TSC ticks at `ratio` APIC
    /// timer ticks per TSC tick (32.32 fixed point), rounded up, at least 1,
    /// at most 2^32 − 1 (a longer wait expires early and is re-armed).
    public static func oneShotCount(forTSCTicks ticks: UInt64, ratio: UInt64) -> UInt32 {
        let product = ticks.multipliedFullWidth(by: ratio)
        guard product.high >> 32 == 0 else { return 0xFFFF_FFFF }
        let whole = product.high << 32 | product.low >> 32
        let rounded = whole &+ (product.low & 0xFFFF_FFFF != 0 ? 1 : 0)
        return UInt32(clamping: max(rounded, 1))
    }
}

/// LVT LINT0/LINT1 values: masked, or NMI delivery (SDM §11.5.1).
public enum LocalVectorTable {
    public static var masked: UInt32 { 1 << 16 }
    /// Delivery mode NMI (100b); the vector field is ignored.
    public static var nmi: UInt32 { 4 << 8 }
    /// Delivery mode ExtINT (111b), for virtual-wire mode.
    public static var externalInterrupt: UInt32 { 7 << 8 }
}

/// Destination shorthands of the ICR (bits 19:18).
public enum InterruptCommandShorthand: UInt32, Sendable {
    case none = 0
    case this = 1
    case allIncludingSelf = 2
    case allExcludingSelf = 3
}

/// An Interrupt Command Register value (SDM vol. 3A §11.6.1): vector 7:0,
/// delivery mode 10:8, destination mode 11, level 14 (assert), trigger 15,
/// shorthand 19:18; the destination is bits 63:56 on xAPIC and 63:32 on
/// x2APIC (§11.12.9).
public struct InterruptCommand: Equatable, Sendable {
    public var vector: UInt8
    public var deliveryMode: InterruptDeliveryMode
    public var destination: UInt32
    public var shorthand: InterruptCommandShorthand
    public var assert: Bool
    public var levelTriggered: Bool

    public init(
        vector: UInt8, deliveryMode: InterruptDeliveryMode = .fixed, destination: UInt32 = 0,
        shorthand: InterruptCommandShorthand = .none, assert: Bool = true, levelTriggered: Bool = false
    ) {
        self.vector = vector
        self.deliveryMode = deliveryMode
        self.destination = destination
        self.shorthand = shorthand
        self.assert = assert
        self.levelTriggered = levelTriggered
    }

    public var low: UInt32 {
        var value = UInt32(vector) | UInt32(deliveryMode.rawValue) << 8 | shorthand.rawValue << 18
        if assert { value |= 1 << 14 }
        if levelTriggered { value |= 1 << 15 }
        return value
    }

    /// The xAPIC ICR high dword (8-bit destination).
    public var xAPICHigh: UInt32 { (destination & 0xFF) << 24 }

    /// The x2APIC ICR MSR value (0x830).
    public var x2APICValue: UInt64 { UInt64(destination) << 32 | UInt64(low) }
}

/// Where one interrupt input arrives: an I/O APIC pin with its mode.
public struct InterruptLine: Equatable, Sendable {
    public var globalSystemInterrupt: UInt32
    /// Index into `InterruptRouting.controllers`.
    public var controller: Int
    public var pin: Int
    public var activeLow: Bool
    public var levelTriggered: Bool
}

/// The I/O APICs of the machine and the ISA overrides, from the MADT or
/// (without ACPI) from the MP table: the routing decisions of the guest.
public struct InterruptRouting: Equatable, Sendable {
    public struct Controller: Equatable, Sendable {
        public var id: UInt8
        public var address: UInt64
        public var globalSystemInterruptBase: UInt32
        /// Pins, as the I/O APIC reports them (24 until read).
        public var pinCount: Int
    }

    /// How ISA IRQ `irq` is wired (when different from identity, edge, high).
    public struct ISAOverride: Equatable, Sendable {
        public var irq: UInt8
        public var globalSystemInterrupt: UInt32
        public var activeLow: Bool
        public var levelTriggered: Bool
    }

    public var controllers: [Controller]
    public var isaOverrides: [ISAOverride]
    /// Dual 8259s present (to be remapped and masked).
    public var hasLegacyPICs: Bool
    public var localAPICAddress: UInt64

    public init(controllers: [Controller], isaOverrides: [ISAOverride], hasLegacyPICs: Bool, localAPICAddress: UInt64) {
        self.controllers = controllers
        self.isaOverrides = isaOverrides
        self.hasLegacyPICs = hasLegacyPICs
        self.localAPICAddress = localAPICAddress
    }

    /// From the MADT: every I/O APIC, ISA overrides on bus 0 with their
    /// polarity and trigger (bus-default meaning active high, edge for ISA).
    public init(madt: MultipleAPICDescriptionTable) {
        controllers = madt.ioAPICs.map {
            Controller(id: $0.ioAPICID, address: UInt64($0.address), globalSystemInterruptBase: $0.globalSystemInterruptBase, pinCount: 24)
        }
        isaOverrides = madt.overrides.filter { $0.bus == 0 && $0.source < 16 }.map {
            ISAOverride(
                irq: $0.source, globalSystemInterrupt: $0.globalSystemInterrupt, activeLow: $0.polarity == .activeLow,
                levelTriggered: $0.trigger == .level)
        }
        hasLegacyPICs = madt.hasLegacyPICs
        localAPICAddress = madt.localAPICAddress
    }

    /// From the MP table: I/O APICs get consecutive GSI bases in table
    /// order (24 pins each until read); ISA IRQs whose assignment differs
    /// from identity, edge, active high become overrides.
    public init(mp: MPConfiguration) {
        var base: UInt32 = 0
        var controllers: [Controller] = []
        for entry in mp.ioAPICs where entry.isEnabled {
            controllers.append(Controller(id: entry.ioAPICID, address: UInt64(entry.address), globalSystemInterruptBase: base, pinCount: 24))
            base += 24
        }
        var overrides: [ISAOverride] = []
        for irq: UInt8 in 0..<16 {
            guard let assignment = mp.route(isaIRQ: irq),
                let controller = controllers.first(where: { $0.id == assignment.destinationID })
            else { continue }
            let gsi = controller.globalSystemInterruptBase + UInt32(assignment.destinationInput)
            let activeLow = assignment.polarity == .activeLow
            let level = assignment.trigger == .level
            if gsi != UInt32(irq) || activeLow || level {
                overrides.append(ISAOverride(irq: irq, globalSystemInterrupt: gsi, activeLow: activeLow, levelTriggered: level))
            }
        }
        self.controllers = controllers
        isaOverrides = overrides
        hasLegacyPICs = true
        localAPICAddress = UInt64(mp.localAPICAddress)
    }

    /// The line of ISA IRQ `irq`: the override when there is one, else
    /// identity-mapped, edge-triggered, active high.
    public func line(isaIRQ irq: UInt8) -> InterruptLine? {
        if let entry = isaOverrides.first(where: { $0.irq == irq }) {
            return line(globalSystemInterrupt: entry.globalSystemInterrupt, activeLow: entry.activeLow, levelTriggered: entry.levelTriggered)
        }
        return line(globalSystemInterrupt: UInt32(irq), activeLow: false, levelTriggered: false)
    }

    /// The line of `gsi` with the given mode; nil when no I/O APIC has it.
    public func line(globalSystemInterrupt gsi: UInt32, activeLow: Bool, levelTriggered: Bool) -> InterruptLine? {
        for (index, controller) in controllers.enumerated()
        where gsi >= controller.globalSystemInterruptBase && gsi - controller.globalSystemInterruptBase < UInt32(controller.pinCount) {
            return InterruptLine(
                globalSystemInterrupt: gsi, controller: index, pin: Int(gsi - controller.globalSystemInterruptBase),
                activeLow: activeLow, levelTriggered: levelTriggered)
        }
        return nil
    }

    /// The line of a PCI function's INTx# when the firmware wrote its
    /// Interrupt Line register (0x3C): on PC chipsets that value is the ISA
    /// IRQ the PCI link is steered to, and in APIC mode the GSI of the same
    /// number; an override for that IRQ (QEMU lists 5, 9, 10, 11 as level)
    /// gives the mode, else PCI's own: level-triggered, active low.
    public func line(pciInterruptLine value: UInt8) -> InterruptLine? {
        guard value != 0xFF, value != 0 else { return nil }
        if let entry = isaOverrides.first(where: { $0.irq == value }) {
            return line(globalSystemInterrupt: entry.globalSystemInterrupt, activeLow: entry.activeLow, levelTriggered: entry.levelTriggered)
        }
        return line(globalSystemInterrupt: UInt32(value), activeLow: true, levelTriggered: true)
    }
}
