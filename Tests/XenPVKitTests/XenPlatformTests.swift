// Boot-discovery tests: CPUID leaves (Xen public/arch-x86/cpuid.h), HVM
// parameters (hvm/params.h) and PV start_info (xen.h), as pure logic.
import CXen
import Testing
@testable import XenPVKit

@Suite struct XenPlatformTests {
    /// CPUID as Xen 4.17 with Viridian leaves in front presents it.
    func cpuid(xenBase: UInt32?) -> (UInt32) -> (UInt32, UInt32, UInt32, UInt32) {
        { leaf in
            guard let base = xenBase else { return (0, 0, 0, 0) }
            switch leaf {
            case 0x4000_0000 where base != 0x4000_0000: return (0x4000_0006, 0x7263_694D, 0x666F_736F, 0x7648_2074)  // "Microsoft Hv"
            case base: return (base + 5, UInt32(XEN_CPUID_SIGNATURE_EBX), UInt32(XEN_CPUID_SIGNATURE_ECX), UInt32(XEN_CPUID_SIGNATURE_EDX))
            case base + 1: return (4 << 16 | 17, 0, 0, 0)
            case base + 2: return (1, 0x4000_0000, 0, 0)
            default: return (0, 0, 0, 0)
            }
        }
    }

    @Test func xenIsFoundBehindViridianLeaves() {
        let found = XenCPUID.detect(cpuid(xenBase: 0x4000_0100))
        #expect(found == XenCPUID(baseLeaf: 0x4000_0100, maximumLeaf: 0x4000_0105, majorVersion: 4, minorVersion: 17,
                                  hypercallPages: 1, hypercallMSR: 0x4000_0000))
        #expect(XenCPUID.detect(cpuid(xenBase: 0x4000_0000))?.baseLeaf == 0x4000_0000)
        #expect(XenCPUID.detect(cpuid(xenBase: nil)) == nil)
    }

    @Test func hvmGuestsFindTheirChannelsInHVMParameters() throws {
        var hypervisor = SimulatedHypervisor(memory: SimulatedMemory())
        hypervisor.hvmParameters = [
            UInt32(HVM_PARAM_STORE_PFN): 0xFEFFF, UInt32(HVM_PARAM_STORE_EVTCHN): 1,
            UInt32(HVM_PARAM_CONSOLE_PFN): 0xFEFFE, UInt32(HVM_PARAM_CONSOLE_EVTCHN): 2,
        ]
        #expect(try XenBootChannels.fromHVMParameters(&hypervisor)
                == XenBootChannels(storeFrame: 0xFEFFF, storePort: 1, consoleFrame: 0xFEFFE, consolePort: 2))
        hypervisor.hvmParameters[UInt32(HVM_PARAM_CONSOLE_EVTCHN)] = nil
        #expect(throws: HypercallError.failed(.hvmOp, command: HVMOP_get_param, status: -Int(XEN_EINVAL.rawValue))) {
            _ = try XenBootChannels.fromHVMParameters(&hypervisor)
        }
    }

    @Test func pvGuestsFindTheirChannelsInStartInfo() {
        var info = start_info()
        info.store_mfn = 0x1234
        info.store_evtchn = 3
        info.console.domU.mfn = 0x1235
        info.console.domU.evtchn = 4
        let channels = withUnsafePointer(to: &info) { XenBootChannels(startInfo: $0) }
        #expect(channels == XenBootChannels(storeFrame: 0x1234, storePort: 3, consoleFrame: 0x1235, consolePort: 4))
    }
}
