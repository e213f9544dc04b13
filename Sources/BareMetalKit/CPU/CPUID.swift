// CPUID: decoding of the identification and feature leaves from register
// values (Intel SDM vol. 2A, CPUID, Tables 3-8 to 3-11 and 3-17; leaf
// 0x40000000 as the hypervisor range, and KVM's 0x40000001 feature bits).

/// The four registers one CPUID execution returns.
public struct CPUIDRegisters: Hashable, Sendable {
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// Something that executes CPUID: the CPU in the guest, a table in tests.
public protocol CPUIDSource {
    func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDRegisters
}

/// A feature flag: a CPUID leaf, a register and a bit.
public enum CPUFeature: CaseIterable, Sendable {
    // Leaf 1 ECX
    case sse3, pclmulqdq, monitor, ssse3, fma, cmpxchg16b, pcid, sse41, sse42, x2apic, movbe, popcnt
    case tscDeadline, aes, xsave, osxsave, avx, f16c, rdrand, hypervisor
    // Leaf 1 EDX
    case fpu, vme, pse, tsc, msr, pae, mce, cmpxchg8b, apic, sep, mtrr, pge, mca, cmov, pat, pse36
    case clflush, mmx, fxsr, sse, sse2, htt
    // Leaf 7 subleaf 0 EBX
    case fsgsbase, tscAdjust, bmi1, avx2, smep, bmi2, erms, invpcid, avx512f, rdseed, adx, smap
    case clflushopt, sha
    // Leaf 7 subleaf 0 ECX
    case umip, pku, waitpkg, la57, rdpid
    // Leaf 7 subleaf 0 EDX
    case mdClear, hybrid, archCapabilities
    // Leaf 0x80000001 ECX
    case lahfLongMode, lzcnt, prefetchw
    // Leaf 0x80000001 EDX
    case syscall, noExecute, gigabytePages, rdtscp, longMode
    // Leaf 0x80000007 EDX
    case invariantTSC

    /// Where the flag lives: (register set, bit).
    public var location: (CPUFeatureRegister, Int) {
        switch self {
        case .sse3: return (.leaf1ECX, 0)
        case .pclmulqdq: return (.leaf1ECX, 1)
        case .monitor: return (.leaf1ECX, 3)
        case .ssse3: return (.leaf1ECX, 9)
        case .fma: return (.leaf1ECX, 12)
        case .cmpxchg16b: return (.leaf1ECX, 13)
        case .pcid: return (.leaf1ECX, 17)
        case .sse41: return (.leaf1ECX, 19)
        case .sse42: return (.leaf1ECX, 20)
        case .x2apic: return (.leaf1ECX, 21)
        case .movbe: return (.leaf1ECX, 22)
        case .popcnt: return (.leaf1ECX, 23)
        case .tscDeadline: return (.leaf1ECX, 24)
        case .aes: return (.leaf1ECX, 25)
        case .xsave: return (.leaf1ECX, 26)
        case .osxsave: return (.leaf1ECX, 27)
        case .avx: return (.leaf1ECX, 28)
        case .f16c: return (.leaf1ECX, 29)
        case .rdrand: return (.leaf1ECX, 30)
        case .hypervisor: return (.leaf1ECX, 31)
        case .fpu: return (.leaf1EDX, 0)
        case .vme: return (.leaf1EDX, 1)
        case .pse: return (.leaf1EDX, 3)
        case .tsc: return (.leaf1EDX, 4)
        case .msr: return (.leaf1EDX, 5)
        case .pae: return (.leaf1EDX, 6)
        case .mce: return (.leaf1EDX, 7)
        case .cmpxchg8b: return (.leaf1EDX, 8)
        case .apic: return (.leaf1EDX, 9)
        case .sep: return (.leaf1EDX, 11)
        case .mtrr: return (.leaf1EDX, 12)
        case .pge: return (.leaf1EDX, 13)
        case .mca: return (.leaf1EDX, 14)
        case .cmov: return (.leaf1EDX, 15)
        case .pat: return (.leaf1EDX, 16)
        case .pse36: return (.leaf1EDX, 17)
        case .clflush: return (.leaf1EDX, 19)
        case .mmx: return (.leaf1EDX, 23)
        case .fxsr: return (.leaf1EDX, 24)
        case .sse: return (.leaf1EDX, 25)
        case .sse2: return (.leaf1EDX, 26)
        case .htt: return (.leaf1EDX, 28)
        case .fsgsbase: return (.leaf7EBX, 0)
        case .tscAdjust: return (.leaf7EBX, 1)
        case .bmi1: return (.leaf7EBX, 3)
        case .avx2: return (.leaf7EBX, 5)
        case .smep: return (.leaf7EBX, 7)
        case .bmi2: return (.leaf7EBX, 8)
        case .erms: return (.leaf7EBX, 9)
        case .invpcid: return (.leaf7EBX, 10)
        case .avx512f: return (.leaf7EBX, 16)
        case .rdseed: return (.leaf7EBX, 18)
        case .adx: return (.leaf7EBX, 19)
        case .smap: return (.leaf7EBX, 20)
        case .clflushopt: return (.leaf7EBX, 23)
        case .sha: return (.leaf7EBX, 29)
        case .umip: return (.leaf7ECX, 2)
        case .pku: return (.leaf7ECX, 3)
        case .waitpkg: return (.leaf7ECX, 5)
        case .la57: return (.leaf7ECX, 16)
        case .rdpid: return (.leaf7ECX, 22)
        case .mdClear: return (.leaf7EDX, 10)
        case .hybrid: return (.leaf7EDX, 15)
        case .archCapabilities: return (.leaf7EDX, 29)
        case .lahfLongMode: return (.extendedECX, 0)
        case .lzcnt: return (.extendedECX, 5)
        case .prefetchw: return (.extendedECX, 8)
        case .syscall: return (.extendedEDX, 11)
        case .noExecute: return (.extendedEDX, 20)
        case .gigabytePages: return (.extendedEDX, 26)
        case .rdtscp: return (.extendedEDX, 27)
        case .longMode: return (.extendedEDX, 29)
        case .invariantTSC: return (.powerManagementEDX, 8)
        }
    }
}

/// The registers feature flags are read from.
public enum CPUFeatureRegister: Int, CaseIterable, Sendable {
    case leaf1ECX, leaf1EDX, leaf7EBX, leaf7ECX, leaf7EDX, extendedECX, extendedEDX, powerManagementEDX
}

/// What CPUID says about the processor (and the hypervisor under it).
public struct CPUInformation: Sendable {
    /// Leaf 0 EAX: highest basic leaf.
    public var maximumLeaf: UInt32
    /// Leaf 0x80000000 EAX: highest extended leaf.
    public var maximumExtendedLeaf: UInt32
    /// Leaf 0 EBX, EDX, ECX: "GenuineIntel", "AuthenticAMD", ...
    public var vendor: InlineArray<12, UInt8>
    /// Leaf 0x40000000 EBX, ECX, EDX when leaf 1 ECX[31] is set: "KVMKVMKVM\0\0\0", ...
    public var hypervisorVendor: InlineArray<12, UInt8>?
    /// Leaf 0x40000000 EAX: highest hypervisor leaf.
    public var maximumHypervisorLeaf: UInt32
    /// Leaf 1 EAX: family, model and stepping, with the extended fields
    /// applied as the SDM specifies.
    public var family: UInt32
    public var model: UInt32
    public var stepping: UInt32
    /// Leaf 1 EBX[31:24]: the initial APIC ID of the CPU that ran CPUID.
    public var initialAPICID: UInt8
    /// Leaf 0x80000008 EAX[7:0] and [15:8] (36 and 48 when absent).
    public var physicalAddressBits: UInt8
    public var linearAddressBits: UInt8
    /// Leaf 0x15: TSC/crystal ratio and crystal frequency, when enumerated.
    public var tscFrequencyHz: UInt64?
    /// KVM leaf 0x40000001 EAX feature bits (0 when not on KVM).
    public var kvmFeatures: UInt32
    var registers: InlineArray<8, UInt32>

    /// Decodes the leaves `source` answers.
    public init<Source: CPUIDSource>(source: Source) {
        let leaf0 = source.cpuid(leaf: 0, subleaf: 0)
        maximumLeaf = leaf0.eax
        vendor = Self.name(leaf0.ebx, leaf0.edx, leaf0.ecx)
        registers = InlineArray(repeating: 0)
        var leaf1 = CPUIDRegisters()
        if maximumLeaf >= 1 { leaf1 = source.cpuid(leaf: 1, subleaf: 0) }
        registers[CPUFeatureRegister.leaf1ECX.rawValue] = leaf1.ecx
        registers[CPUFeatureRegister.leaf1EDX.rawValue] = leaf1.edx
        if maximumLeaf >= 7 {
            let leaf7 = source.cpuid(leaf: 7, subleaf: 0)
            registers[CPUFeatureRegister.leaf7EBX.rawValue] = leaf7.ebx
            registers[CPUFeatureRegister.leaf7ECX.rawValue] = leaf7.ecx
            registers[CPUFeatureRegister.leaf7EDX.rawValue] = leaf7.edx
        }
        let baseFamily = (leaf1.eax >> 8) & 0xF
        let baseModel = (leaf1.eax >> 4) & 0xF
        family = baseFamily == 0xF ? baseFamily + ((leaf1.eax >> 20) & 0xFF) : baseFamily
        model = baseFamily == 0x6 || baseFamily == 0xF ? baseModel | ((leaf1.eax >> 16) & 0xF) << 4 : baseModel
        stepping = leaf1.eax & 0xF
        initialAPICID = UInt8(leaf1.ebx >> 24)
        tscFrequencyHz = nil
        if maximumLeaf >= 0x15 {
            let leaf15 = source.cpuid(leaf: 0x15, subleaf: 0)
            if leaf15.eax != 0, leaf15.ebx != 0, leaf15.ecx != 0 {
                tscFrequencyHz = UInt64(leaf15.ecx) * UInt64(leaf15.ebx) / UInt64(leaf15.eax)
            }
        }
        let extended = source.cpuid(leaf: 0x8000_0000, subleaf: 0)
        maximumExtendedLeaf = extended.eax >= 0x8000_0000 && extended.eax < 0x8000_1000 ? extended.eax : 0
        physicalAddressBits = 36
        linearAddressBits = 48
        if maximumExtendedLeaf >= 0x8000_0001 {
            let leaf = source.cpuid(leaf: 0x8000_0001, subleaf: 0)
            registers[CPUFeatureRegister.extendedECX.rawValue] = leaf.ecx
            registers[CPUFeatureRegister.extendedEDX.rawValue] = leaf.edx
        }
        if maximumExtendedLeaf >= 0x8000_0007 {
            registers[CPUFeatureRegister.powerManagementEDX.rawValue] = source.cpuid(leaf: 0x8000_0007, subleaf: 0).edx
        }
        if maximumExtendedLeaf >= 0x8000_0008 {
            let leaf = source.cpuid(leaf: 0x8000_0008, subleaf: 0)
            physicalAddressBits = UInt8(leaf.eax & 0xFF)
            linearAddressBits = UInt8((leaf.eax >> 8) & 0xFF)
        }
        hypervisorVendor = nil
        maximumHypervisorLeaf = 0
        kvmFeatures = 0
        if leaf1.ecx & (1 << 31) != 0 {
            let leaf = source.cpuid(leaf: 0x4000_0000, subleaf: 0)
            let name = Self.name(leaf.ebx, leaf.ecx, leaf.edx)
            hypervisorVendor = name
            maximumHypervisorLeaf = leaf.eax
            if Self.matches(name, "KVMKVMKVM") {
                // Old KVM reports 0 as the maximum leaf and means 0x40000001.
                if leaf.eax == 0 || leaf.eax >= 0x4000_0001 {
                    kvmFeatures = source.cpuid(leaf: 0x4000_0001, subleaf: 0).eax
                }
            }
        }
    }

    /// Whether the CPU reports `feature`.
    public func has(_ feature: CPUFeature) -> Bool {
        let (register, bit) = feature.location
        return registers[register.rawValue] & (1 << UInt32(bit)) != 0
    }

    /// The raw register a set of flags comes from.
    public func register(_ register: CPUFeatureRegister) -> UInt32 { registers[register.rawValue] }

    /// Running under KVM (hypervisor leaf signature "KVMKVMKVM").
    public var isKVM: Bool { hypervisorVendor.map { Self.matches($0, "KVMKVMKVM") } ?? false }

    /// KVM_FEATURE_CLOCKSOURCE2 (bit 3): kvmclock through MSRs 0x4b564d00/01.
    public var hasKVMClock: Bool { kvmFeatures & (1 << 3) != 0 }

    /// KVM_FEATURE_CLOCKSOURCE_STABLE_BIT (bit 24).
    public var hasStableKVMClock: Bool { kvmFeatures & (1 << 24) != 0 }

    /// Whether the 12-byte name starts with `prefix`.
    public static func matches(_ name: InlineArray<12, UInt8>, _ prefix: StaticString) -> Bool {
        let count = prefix.utf8CodeUnitCount
        guard count <= 12 else { return false }
        for index in 0..<count where name[index] != prefix.utf8Start[index] { return false }
        return true
    }

    static func name(_ a: UInt32, _ b: UInt32, _ c: UInt32) -> InlineArray<12, UInt8> {
        var result = InlineArray<12, UInt8>(repeating: 0)
        for index in 0..<4 {
            result[index] = UInt8(truncatingIfNeeded: a >> UInt32(8 * index))
            result[4 + index] = UInt8(truncatingIfNeeded: b >> UInt32(8 * index))
            result[8 + index] = UInt8(truncatingIfNeeded: c >> UInt32(8 * index))
        }
        return result
    }
}
