// DescriptorTables: the x86-64 GDT, 64-bit TSS and IDT as pure data (Intel
// SDM vol. 3A §3.4.5 "Segment Descriptors", §8.2.3 "TSS Descriptor in 64-bit
// mode", §8.7 "Task Management in 64-bit Mode", §6.14.1 "64-Bit Mode IDT").

/// A code or data segment descriptor (SDM vol. 3A §3.4.5, Figure 3-8).
public struct SegmentDescriptor: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Builds a descriptor from its fields.
    /// - Parameters:
    ///   - type: the 4-bit type field (code: 0x8 execute, 0x2 readable,
    ///     0x1 accessed; data: 0x2 writable).
    ///   - flags: bits 52–55: AVL (0x1), L (0x2, 64-bit code), D/B (0x4), G (0x8).
    public init(base: UInt32, limit: UInt32, type: UInt8, isCodeOrData: Bool = true, privilegeLevel: UInt8, flags: UInt8) {
        var value = UInt64(limit & 0xFFFF)
        value |= UInt64(base & 0xFF_FFFF) << 16
        value |= UInt64(type & 0xF) << 40
        value |= (isCodeOrData ? 1 : 0) << 44
        value |= UInt64(privilegeLevel & 3) << 45
        value |= 1 << 47
        value |= UInt64((limit >> 16) & 0xF) << 48
        value |= UInt64(flags & 0xF) << 52
        value |= UInt64(base >> 24) << 56
        rawValue = value
    }

    /// 64-bit kernel code: execute/read, L=1, DPL 0 (0x00AF9A000000FFFF).
    public static var kernelCode: Self {
        Self(base: 0, limit: 0xF_FFFF, type: 0xA, privilegeLevel: 0, flags: 0xA)
    }
    /// Kernel data: read/write, D/B=1, G=1, DPL 0 (0x00CF92000000FFFF).
    public static var kernelData: Self {
        Self(base: 0, limit: 0xF_FFFF, type: 0x2, privilegeLevel: 0, flags: 0xC)
    }
    /// 64-bit user code, DPL 3.
    public static var userCode: Self { Self(base: 0, limit: 0xF_FFFF, type: 0xA, privilegeLevel: 3, flags: 0xA) }
    /// User data, DPL 3.
    public static var userData: Self { Self(base: 0, limit: 0xF_FFFF, type: 0x2, privilegeLevel: 3, flags: 0xC) }

    public var base: UInt32 { UInt32((rawValue >> 16) & 0xFF_FFFF) | UInt32(rawValue >> 56) << 24 }
    public var limit: UInt32 { UInt32(rawValue & 0xFFFF) | UInt32((rawValue >> 48) & 0xF) << 16 }
    public var type: UInt8 { UInt8((rawValue >> 40) & 0xF) }
    public var privilegeLevel: UInt8 { UInt8((rawValue >> 45) & 3) }
    public var isPresent: Bool { rawValue & (1 << 47) != 0 }
    public var isLongMode: Bool { rawValue & (1 << 53) != 0 }
}

/// The 16-byte descriptor of a 64-bit TSS (SDM vol. 3A §8.2.3, Figure 8-4).
public struct TaskStateSegmentDescriptor: Hashable, Sendable {
    /// Bytes 0–7: limit, base 31:0, type 0x9 (available 64-bit TSS), P.
    public var low: UInt64
    /// Bytes 8–15: base 63:32, the rest reserved (zero).
    public var high: UInt64

    /// Type 0x9: available 64-bit TSS; 0xB once `ltr` marked it busy.
    public init(base: UInt64, limit: UInt32 = UInt32(TaskStateSegment.byteCount - 1), busy: Bool = false) {
        low = SegmentDescriptor(
            base: UInt32(truncatingIfNeeded: base), limit: limit, type: busy ? 0xB : 0x9, isCodeOrData: false,
            privilegeLevel: 0, flags: 0
        ).rawValue
        high = base >> 32
    }

    public var base: UInt64 { UInt64(SegmentDescriptor(rawValue: low).base) | high << 32 }
}

/// A 64-bit task-state segment (SDM vol. 3A §8.7, Figure 8-11): the stacks
/// the CPU switches to on privilege changes (RSP0–2) and on interrupts whose
/// gate names an interrupt stack table slot (IST1–7).
public struct TaskStateSegment: Hashable, Sendable {
    public static var byteCount: Int { 104 }

    /// Stack pointers loaded on a change to privilege level 0, 1, 2.
    public var privilegeStacks: InlineArray<3, UInt64> = InlineArray(repeating: 0)
    /// IST1 at index 0 through IST7 at index 6: top-of-stack addresses.
    public var interruptStacks: InlineArray<7, UInt64> = InlineArray(repeating: 0)
    /// Offset of the I/O permission bitmap; at or past the limit means none.
    public var ioMapBase: UInt16 = UInt16(TaskStateSegment.byteCount)

    public init() {}

    public static func == (lhs: Self, rhs: Self) -> Bool {
        for index in 0..<3 where lhs.privilegeStacks[index] != rhs.privilegeStacks[index] { return false }
        for index in 0..<7 where lhs.interruptStacks[index] != rhs.interruptStacks[index] { return false }
        return lhs.ioMapBase == rhs.ioMapBase
    }

    public func hash(into hasher: inout Hasher) {
        for index in 0..<7 { hasher.combine(interruptStacks[index]) }
    }

    /// Writes the 104-byte hardware layout: reserved (0), RSP0 at 4, RSP1
    /// at 12, RSP2 at 20, reserved at 28, IST1 at 36 … IST7 at 84, reserved
    /// at 92 and 100, I/O map base at 102. The fields are unaligned.
    ///
    /// The caller guarantees 104 writable bytes at `pointer`.
    public func store(to pointer: UnsafeMutableRawPointer) {
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.byteCount)
        for index in 0..<3 {
            pointer.storeBytes(of: privilegeStacks[index].littleEndian, toByteOffset: 4 + 8 * index, as: UInt64.self)
        }
        for index in 0..<7 {
            pointer.storeBytes(of: interruptStacks[index].littleEndian, toByteOffset: 36 + 8 * index, as: UInt64.self)
        }
        pointer.storeBytes(of: ioMapBase.littleEndian, toByteOffset: 102, as: UInt16.self)
    }
}

/// A 64-bit IDT gate descriptor (SDM vol. 3A §6.14.1, Figure 6-8).
public struct GateDescriptor: Hashable, Sendable {
    public enum Kind: UInt8, Sendable {
        /// Type 0xE: clears IF on entry.
        case interrupt = 0xE
        /// Type 0xF: leaves IF alone.
        case trap = 0xF
    }

    /// Bytes 0–7: offset 15:0, selector, IST, type, DPL, P, offset 31:16.
    public var low: UInt64
    /// Bytes 8–15: offset 63:32, reserved.
    public var high: UInt64

    /// The not-present gate (a #NP on use).
    public static var absent: Self { Self(low: 0, high: 0) }

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// A present gate to `handler` through code segment `selector`,
    /// switching to IST slot `interruptStack` (1–7; 0 keeps the stack).
    public init(handler: UInt64, selector: UInt16, interruptStack: UInt8, kind: Kind = .interrupt, privilegeLevel: UInt8 = 0) {
        var value = handler & 0xFFFF
        value |= UInt64(selector) << 16
        value |= UInt64(interruptStack & 0x7) << 32
        value |= UInt64(kind.rawValue) << 40
        value |= UInt64(privilegeLevel & 3) << 45
        value |= 1 << 47
        value |= ((handler >> 16) & 0xFFFF) << 48
        low = value
        high = handler >> 32
    }

    public var handler: UInt64 { (low & 0xFFFF) | ((low >> 48) & 0xFFFF) << 16 | (high & 0xFFFF_FFFF) << 32 }
    public var selector: UInt16 { UInt16(truncatingIfNeeded: low >> 16) }
    public var interruptStack: UInt8 { UInt8((low >> 32) & 0x7) }
    public var kind: Kind? { Kind(rawValue: UInt8((low >> 40) & 0xF)) }
    public var privilegeLevel: UInt8 { UInt8((low >> 45) & 3) }
    public var isPresent: Bool { low & (1 << 47) != 0 }
}

/// The platform's GDT layout: the boot selectors stay valid, a TSS follows.
public enum GlobalDescriptorTableLayout {
    public static var kernelCodeSelector: UInt16 { 0x08 }
    public static var kernelDataSelector: UInt16 { 0x10 }
    public static var taskStateSelector: UInt16 { 0x18 }
    /// Five 8-byte slots: null, code, data, TSS (two slots).
    public static var entryCount: Int { 5 }
    public static var byteCount: Int { entryCount * 8 }

    /// Writes the five slots for a TSS at `taskStateBase`.
    /// The caller guarantees `byteCount` writable bytes at `pointer`.
    public static func store(to pointer: UnsafeMutableRawPointer, taskStateBase: UInt64) {
        let tss = TaskStateSegmentDescriptor(base: taskStateBase)
        let slots: (UInt64, UInt64, UInt64, UInt64, UInt64) =
            (0, SegmentDescriptor.kernelCode.rawValue, SegmentDescriptor.kernelData.rawValue, tss.low, tss.high)
        pointer.storeBytes(of: slots.0, toByteOffset: 0, as: UInt64.self)
        pointer.storeBytes(of: slots.1, toByteOffset: 8, as: UInt64.self)
        pointer.storeBytes(of: slots.2, toByteOffset: 16, as: UInt64.self)
        pointer.storeBytes(of: slots.3, toByteOffset: 24, as: UInt64.self)
        pointer.storeBytes(of: slots.4, toByteOffset: 32, as: UInt64.self)
    }
}

/// Architectural exception vectors (SDM vol. 3A §6.3.1, Table 6-1).
public enum ExceptionVector: UInt8, CaseIterable, Sendable {
    case divideError = 0, debug = 1, nonMaskableInterrupt = 2, breakpoint = 3, overflow = 4
    case boundRangeExceeded = 5, invalidOpcode = 6, deviceNotAvailable = 7, doubleFault = 8
    case invalidTSS = 10, segmentNotPresent = 11, stackSegmentFault = 12, generalProtection = 13
    case pageFault = 14, x87FloatingPoint = 16, alignmentCheck = 17, machineCheck = 18
    case simdFloatingPoint = 19, virtualization = 20, controlProtection = 21

    /// Whether the CPU pushes an error code for this vector.
    public var pushesErrorCode: Bool {
        switch self {
        case .doubleFault, .invalidTSS, .segmentNotPresent, .stackSegmentFault, .generalProtection,
            .pageFault, .alignmentCheck, .controlProtection:
            return true
        default:
            return false
        }
    }

    /// The mnemonic (#PF, #GP, ...), for fault reports.
    public var mnemonic: StaticString {
        switch self {
        case .divideError: return "#DE"
        case .debug: return "#DB"
        case .nonMaskableInterrupt: return "NMI"
        case .breakpoint: return "#BP"
        case .overflow: return "#OF"
        case .boundRangeExceeded: return "#BR"
        case .invalidOpcode: return "#UD"
        case .deviceNotAvailable: return "#NM"
        case .doubleFault: return "#DF"
        case .invalidTSS: return "#TS"
        case .segmentNotPresent: return "#NP"
        case .stackSegmentFault: return "#SS"
        case .generalProtection: return "#GP"
        case .pageFault: return "#PF"
        case .x87FloatingPoint: return "#MF"
        case .alignmentCheck: return "#AC"
        case .machineCheck: return "#MC"
        case .simdFloatingPoint: return "#XM"
        case .virtualization: return "#VE"
        case .controlProtection: return "#CP"
        }
    }
}

/// The page-fault error code bits (SDM vol. 3A §4.7, Figure 4-12).
public struct PageFaultErrorCode: OptionSet, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// P: 0 = not-present page, 1 = protection violation.
    public static var protectionViolation: Self { Self(rawValue: 1 << 0) }
    /// W/R: the access was a write.
    public static var write: Self { Self(rawValue: 1 << 1) }
    /// U/S: the access was in user mode.
    public static var user: Self { Self(rawValue: 1 << 2) }
    /// RSVD: a reserved bit was set in a paging-structure entry.
    public static var reservedBit: Self { Self(rawValue: 1 << 3) }
    /// I/D: the access was an instruction fetch.
    public static var instructionFetch: Self { Self(rawValue: 1 << 4) }
}
