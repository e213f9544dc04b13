// ProcessorStartup: which processors to start and the interprocessor
// interrupts that start them. Pure decisions, host-tested; the guest side is
// GuestProcessors.swift.
//
// Facts: ACPI 6.5 §5.2.12.2 and §5.2.12.12 (Local APIC and x2APIC entries,
// Enabled and Online Capable flags); Intel SDM vol. 3A §8.4.4.1 (INIT-SIPI-SIPI: INIT, 10 ms, STARTUP, 200 us, STARTUP).

/// One processor the platform will try to start.
public struct ProcessorSlot: Equatable, Sendable {
    /// Dense index: 0 is the boot processor, then the MADT's order.
    public var index: Int
    public var apicID: UInt32
    public var processorUID: UInt32
}

/// Why a MADT processor entry is not started.
public enum ProcessorSkipReason: Equatable, Sendable {
    /// Neither Enabled nor Online Capable: not usable at all.
    case disabled
    /// Online Capable but not Enabled: could be hot-added, not present now.
    case notPresent
    /// A second entry with an APIC ID already listed.
    case duplicateAPICID
    /// More processors than the platform supports.
    case beyondLimit
    /// An x2APIC ID the xAPIC ICR cannot address (above 254).
    case needsX2APIC
}

/// The processors to start, in order, and the ones left out with reasons.
public struct ProcessorStartupPlan: Equatable, Sendable {
    public var bootProcessor: ProcessorSlot
    public var applicationProcessors: [ProcessorSlot] = []
    public var skipped: [(apicID: UInt32, reason: ProcessorSkipReason)] = []

    public var processorCount: Int { 1 + applicationProcessors.count }

    /// Builds the plan from the MADT's processor entries. `bootAPICID` is the
    /// running CPU's own APIC ID; if the MADT does not list it, the boot
    /// processor still counts as CPU 0. `x2APIC` says whether the ICR can
    /// address 32-bit IDs.
    public init(processors: [MADTProcessor], bootAPICID: UInt32, limit: Int, x2APIC: Bool = false) {
        let bootUID = processors.first(where: { $0.apicID == bootAPICID })?.processorUID ?? 0
        bootProcessor = ProcessorSlot(index: 0, apicID: bootAPICID, processorUID: bootUID)
        var seen: [UInt32] = [bootAPICID]
        for entry in processors where entry.apicID != bootAPICID {
            let reason: ProcessorSkipReason?
            if !entry.isEnabled {
                reason = entry.isOnlineCapable ? .notPresent : .disabled
            } else if seen.contains(entry.apicID) {
                reason = .duplicateAPICID
            } else if !x2APIC && entry.apicID > 254 {
                reason = .needsX2APIC
            } else if 1 + applicationProcessors.count >= limit {
                reason = .beyondLimit
            } else {
                reason = nil
            }
            if let reason {
                skipped.append((entry.apicID, reason))
                continue
            }
            seen.append(entry.apicID)
            applicationProcessors.append(
                ProcessorSlot(index: 1 + applicationProcessors.count, apicID: entry.apicID, processorUID: entry.processorUID))
        }
    }

    /// The plan from the Intel MP table's processor entries (MP spec 1.4
    /// §4.3.1), for firmware without an ACPI MADT: an entry's EN flag is its
    /// enabled bit, and the APIC ID stands in for the ACPI processor UID.
    public init(multiprocessor: MPConfiguration, bootAPICID: UInt32, limit: Int) {
        let processors = multiprocessor.processors.map {
            MADTProcessor(
                processorUID: UInt32($0.localAPICID), apicID: UInt32($0.localAPICID), isEnabled: $0.isEnabled,
                isOnlineCapable: false, isX2APIC: false)
        }
        self.init(processors: processors, bootAPICID: bootAPICID, limit: limit)
    }

    public static func == (lhs: ProcessorStartupPlan, rhs: ProcessorStartupPlan) -> Bool {
        lhs.bootProcessor == rhs.bootProcessor && lhs.applicationProcessors == rhs.applicationProcessors
            && lhs.skipped.count == rhs.skipped.count
            && zip(lhs.skipped, rhs.skipped).allSatisfy { $0.apicID == $1.apicID && $0.reason == $1.reason }
    }
}

/// The interprocessor interrupts of start-up and shutdown, as ICR values
/// (the interrupt layer's `InterruptCommand`).
extension InterruptCommand {
    /// INIT, level assert: resets the target into wait-for-SIPI.
    public static func initialize(apicID: UInt32) -> InterruptCommand {
        InterruptCommand(vector: 0, deliveryMode: .initialize, destination: apicID)
    }

    /// STARTUP: the target begins in real mode at `page` << 12 (a page below
    /// 1 MiB, outside the VGA window 0xA0–0xBF).
    public static func startup(apicID: UInt32, page: UInt8) -> InterruptCommand {
        InterruptCommand(vector: page, deliveryMode: .startup, destination: apicID)
    }

    /// The wake-up IPI that ends a halted CPU's HLT.
    public static func wakeUp(apicID: UInt32) -> InterruptCommand {
        InterruptCommand(vector: InterruptVectors.wakeup, destination: apicID)
    }

    /// An NMI to every CPU but the sender: how a panicking CPU stops the others.
    public static var nonMaskableToAllOthers: InterruptCommand {
        InterruptCommand(vector: 0, deliveryMode: .nmi, shorthand: .allExcludingSelf)
    }
}

/// Delays of the universal start-up algorithm, in microseconds.
public enum ProcessorStartupTiming {
    public static let afterINIT: UInt64 = 10_000
    public static let afterSTARTUP: UInt64 = 200
    /// How long the boot processor waits for an AP to report before it is
    /// declared dead and skipped (generous: a loaded host running TCG).
    public static let reportTimeout: UInt64 = 2_000_000
}
