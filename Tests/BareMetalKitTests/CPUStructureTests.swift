// Tests of the GDT, TSS and IDT encoders bit by bit against the layouts in
// Intel SDM vol. 3A (Figures 3-8, 8-4, 8-11, 6-8), and of CPUID decoding.
import CPUPrimitives
import Foundation
import Testing
@testable import BareMetalKit

struct DescriptorTableTests {
    @Test func flatSegmentsMatchTheBootGDT() {
        // entry.S loads these exact values.
        #expect(SegmentDescriptor.kernelCode.rawValue == 0x00AF_9A00_0000_FFFF)
        #expect(SegmentDescriptor.kernelData.rawValue == 0x00CF_9200_0000_FFFF)
        #expect(SegmentDescriptor.userCode.rawValue == 0x00AF_FA00_0000_FFFF)
        #expect(SegmentDescriptor.userData.rawValue == 0x00CF_F200_0000_FFFF)
        #expect(SegmentDescriptor.kernelCode.isLongMode)
        #expect(!SegmentDescriptor.kernelData.isLongMode)
        #expect(SegmentDescriptor.userCode.privilegeLevel == 3)
    }

    @Test func segmentFieldsLandInTheirBits() {
        let descriptor = SegmentDescriptor(base: 0x1234_5678, limit: 0xA_BCDE, type: 0x3, privilegeLevel: 2, flags: 0x5)
        let raw = descriptor.rawValue
        #expect(raw & 0xFFFF == 0xBCDE)  // limit 15:0
        #expect((raw >> 16) & 0xFF_FFFF == 0x34_5678)  // base 23:0
        #expect((raw >> 40) & 0xF == 0x3)  // type
        #expect((raw >> 44) & 1 == 1)  // S
        #expect((raw >> 45) & 3 == 2)  // DPL
        #expect((raw >> 47) & 1 == 1)  // P
        #expect((raw >> 48) & 0xF == 0xA)  // limit 19:16
        #expect((raw >> 52) & 0xF == 0x5)  // AVL, L, D/B, G
        #expect(raw >> 56 == 0x12)  // base 31:24
        #expect(descriptor.base == 0x1234_5678)
        #expect(descriptor.limit == 0xA_BCDE)
    }

    @Test func taskStateDescriptorIsSixteenBytesWithTypeNine() {
        let descriptor = TaskStateSegmentDescriptor(base: 0xFFFF_8000_1234_5678)
        #expect(descriptor.low & 0xFFFF == 103)
        #expect((descriptor.low >> 16) & 0xFF_FFFF == 0x34_5678)
        #expect((descriptor.low >> 40) & 0xF == 0x9)
        #expect((descriptor.low >> 44) & 1 == 0)  // system descriptor
        #expect((descriptor.low >> 47) & 1 == 1)
        #expect(descriptor.low >> 56 == 0x12)
        #expect(descriptor.high == 0xFFFF_8000)
        #expect(descriptor.base == 0xFFFF_8000_1234_5678)
        #expect((TaskStateSegmentDescriptor(base: 0, busy: true).low >> 40) & 0xF == 0xB)
    }

    @Test func taskStateSegmentLayout() {
        var tss = TaskStateSegment()
        tss.privilegeStacks[0] = 0x1111_2222_3333_4444
        for index in 0..<7 { tss.interruptStacks[index] = 0xAAAA_0000_0000_0000 | UInt64(index + 1) }
        var bytes = [UInt8](repeating: 0xEE, count: 104)
        bytes.withUnsafeMutableBytes { tss.store(to: $0.baseAddress!) }
        func load64(_ offset: Int) -> UInt64 {
            (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
        }
        #expect(bytes[0..<4].allSatisfy { $0 == 0 })
        #expect(load64(4) == 0x1111_2222_3333_4444)  // RSP0
        #expect(load64(12) == 0)  // RSP1
        #expect(load64(28) == 0)  // reserved
        #expect(load64(36) == 0xAAAA_0000_0000_0001)  // IST1
        #expect(load64(84) == 0xAAAA_0000_0000_0007)  // IST7
        #expect(load64(92) == 0)
        #expect(bytes[102] == 104 && bytes[103] == 0)  // I/O map base: none
    }

    @Test func interruptGateLayout() {
        let gate = GateDescriptor(handler: 0xFFFF_8123_4567_89AB, selector: 0x08, interruptStack: 3)
        #expect(gate.low & 0xFFFF == 0x89AB)  // offset 15:0
        #expect((gate.low >> 16) & 0xFFFF == 0x0008)  // selector
        #expect((gate.low >> 32) & 0x7 == 3)  // IST
        #expect((gate.low >> 35) & 0x1F == 0)  // bits 7:3 of byte 4 zero
        #expect((gate.low >> 40) & 0xF == 0xE)  // 64-bit interrupt gate
        #expect((gate.low >> 44) & 1 == 0)
        #expect((gate.low >> 45) & 3 == 0)  // DPL
        #expect((gate.low >> 47) & 1 == 1)  // P
        #expect(gate.low >> 48 == 0x4567)  // offset 31:16
        #expect(gate.high == 0xFFFF_8123)  // offset 63:32, reserved zero
        #expect(gate.handler == 0xFFFF_8123_4567_89AB)
        #expect(gate.interruptStack == 3)
        #expect(gate.kind == .interrupt)
        let trap = GateDescriptor(handler: 0x1000, selector: 0x08, interruptStack: 0, kind: .trap, privilegeLevel: 3)
        #expect(trap.low == 0x0000_EF00_0008_1000)
        #expect(!GateDescriptor.absent.isPresent)
    }

    @Test func gdtLayoutKeepsTheBootSelectors() {
        var slots = [UInt64](repeating: 0xFF, count: 5)
        slots.withUnsafeMutableBytes { GlobalDescriptorTableLayout.store(to: $0.baseAddress!, taskStateBase: 0x20_1000) }
        #expect(slots[0] == 0)
        #expect(slots[Int(GlobalDescriptorTableLayout.kernelCodeSelector) / 8] == 0x00AF_9A00_0000_FFFF)
        #expect(slots[Int(GlobalDescriptorTableLayout.kernelDataSelector) / 8] == 0x00CF_9200_0000_FFFF)
        let tss = TaskStateSegmentDescriptor(base: 0x20_1000)
        #expect(slots[3] == tss.low && slots[4] == tss.high)
    }

    @Test func exceptionVectorsWithErrorCodes() {
        let withCode = ExceptionVector.allCases.filter(\.pushesErrorCode).map(\.rawValue)
        #expect(withCode == [8, 10, 11, 12, 13, 14, 17, 21])
        #expect(PageFaultErrorCode(rawValue: 0x11) == [.protectionViolation, .instructionFetch])
    }
}

/// A CPUID table: leaf/subleaf -> registers, zero elsewhere.
struct CPUIDTable: CPUIDSource {
    var leaves: [UInt64: CPUIDRegisters]
    func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDRegisters {
        leaves[UInt64(leaf) << 32 | UInt64(subleaf)] ?? CPUIDRegisters()
    }
}

/// The CPU the tests run on.
struct HostCPUID: CPUIDSource {
    func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDRegisters {
        var out: (UInt32, UInt32, UInt32, UInt32) = (0, 0, 0, 0)
        withUnsafeMutableBytes(of: &out) { cpu_cpuid(leaf, subleaf, $0.baseAddress!.assumingMemoryBound(to: UInt32.self)) }
        return CPUIDRegisters(eax: out.0, ebx: out.1, ecx: out.2, edx: out.3)
    }
}

struct CPUIDTests {
    /// Every flag reads exactly its own bit.
    @Test(arguments: CPUFeature.allCases)
    func eachFeatureReadsItsOwnBit(feature: CPUFeature) {
        let (register, bit) = feature.location
        var leaves: [UInt64: CPUIDRegisters] = [
            0: CPUIDRegisters(eax: 0x16), 0x8000_0000 << 32: CPUIDRegisters(eax: 0x8000_0008),
        ]
        func set(_ leaf: UInt64, _ update: (inout CPUIDRegisters) -> Void) {
            var registers = leaves[leaf << 32] ?? CPUIDRegisters()
            update(&registers)
            leaves[leaf << 32] = registers
        }
        let mask = UInt32(1) << UInt32(bit)
        switch register {
        case .leaf1ECX: set(1) { $0.ecx = mask }
        case .leaf1EDX: set(1) { $0.edx = mask }
        case .leaf7EBX: set(7) { $0.ebx = mask }
        case .leaf7ECX: set(7) { $0.ecx = mask }
        case .leaf7EDX: set(7) { $0.edx = mask }
        case .extendedECX: set(0x8000_0001) { $0.ecx = mask }
        case .extendedEDX: set(0x8000_0001) { $0.edx = mask }
        case .powerManagementEDX: set(0x8000_0007) { $0.edx = mask }
        }
        let information = CPUInformation(source: CPUIDTable(leaves: leaves))
        for other in CPUFeature.allCases {
            #expect(information.has(other) == (other == feature), "\(other)")
        }
    }

    @Test func identificationFields() {
        // "GenuineIntel", family 6 model 0x55 stepping 7 (Skylake-SP), under KVM.
        let leaves: [UInt64: CPUIDRegisters] = [
            0: CPUIDRegisters(eax: 0x16, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
            1 << 32: CPUIDRegisters(eax: 0x0005_0657, ebx: 0x0300_0800, ecx: 0x8000_0000, edx: 0),
            0x15 << 32: CPUIDRegisters(eax: 2, ebx: 176, ecx: 25_000_000),
            0x4000_0000 << 32: CPUIDRegisters(eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
            0x4000_0001 << 32: CPUIDRegisters(eax: 0x0100_0008),
            0x8000_0000 << 32: CPUIDRegisters(eax: 0x8000_0008),
            0x8000_0008 << 32: CPUIDRegisters(eax: 0x3027),
        ]
        let information = CPUInformation(source: CPUIDTable(leaves: leaves))
        #expect(CPUInformation.matches(information.vendor, "GenuineIntel"))
        #expect(information.family == 6)
        #expect(information.model == 0x55)
        #expect(information.stepping == 7)
        #expect(information.initialAPICID == 3)
        #expect(information.tscFrequencyHz == 2_200_000_000)
        #expect(information.isKVM)
        #expect(information.hasKVMClock)
        #expect(information.hasStableKVMClock)
        #expect(information.physicalAddressBits == 39)
        #expect(information.linearAddressBits == 48)
        // Family 0xF adds the extended family: AMD Zen (0x17).
        let zen = CPUInformation(source: CPUIDTable(leaves: [
            0: CPUIDRegisters(eax: 1), 1 << 32: CPUIDRegisters(eax: 0x0080_0F82),
        ]))
        #expect(zen.family == 0x17)
        #expect(zen.model == 0x08)
        #expect(zen.hypervisorVendor == nil)
        #expect(zen.physicalAddressBits == 36)
    }

    /// The decoder agrees with the Linux kernel's view of this machine.
    @Test func hostCPUAgreesWithProcCPUInfo() throws {
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: ":")[1].split(separator: " ").map(String.init))
        let information = CPUInformation(source: HostCPUID())
        let names: [(CPUFeature, String)] = [
            (.fpu, "fpu"), (.tsc, "tsc"), (.msr, "msr"), (.pae, "pae"), (.apic, "apic"), (.pge, "pge"),
            (.cmov, "cmov"), (.pat, "pat"), (.clflush, "clflush"), (.mmx, "mmx"), (.fxsr, "fxsr"),
            (.sse, "sse"), (.sse2, "sse2"), (.sse3, "pni"), (.ssse3, "ssse3"), (.sse41, "sse4_1"),
            (.sse42, "sse4_2"), (.popcnt, "popcnt"), (.hypervisor, "hypervisor"), (.bmi1, "bmi1"),
            (.noExecute, "nx"), (.longMode, "lm"), (.rdtscp, "rdtscp"),
        ]
        // (Flags Linux may clear on its command line or for errata are left out.)
        for (feature, name) in names {
            #expect(information.has(feature) == flags.contains(name), "\(name)")
        }
        #expect(information.has(.longMode))
    }
}
