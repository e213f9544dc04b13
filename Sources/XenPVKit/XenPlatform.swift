// XenPlatform: finding Xen and the pages it provides at boot (Xen public
// arch-x86/cpuid.h leaves, hvm/params.h HVM_PARAM_STORE_*/CONSOLE_*, and
// xen.h start_info for PV guests). Pure logic; the CPUID instruction and
// the MSR write stay with the boot code.
import CXen

/// What CPUID says about the hypervisor (arch-x86/cpuid.h).
public struct XenCPUID: Equatable, Sendable {
    /// The leaf carrying the "XenVMMXenVMM" signature (0x40000000 + n * 0x100).
    public var baseLeaf: UInt32
    /// The largest Xen leaf.
    public var maximumLeaf: UInt32
    public var majorVersion: UInt16
    public var minorVersion: UInt16
    /// Leaf base+2: hypercall transfer pages, and the MSR that takes the
    /// page's physical address.
    public var hypercallPages: UInt32
    public var hypercallMSR: UInt32

    /// Looks for Xen's leaves at each 0x100 boundary from 0x40000000 (Xen
    /// moves them up when it also offers Viridian leaves). `cpuid` executes
    /// the instruction for a leaf and returns (eax, ebx, ecx, edx).
    public static func detect(_ cpuid: (UInt32) -> (UInt32, UInt32, UInt32, UInt32)) -> XenCPUID? {
        var base = UInt32(XEN_CPUID_FIRST_LEAF)
        while base < UInt32(XEN_CPUID_FIRST_LEAF) + 0x10000 {
            let (eax, ebx, ecx, edx) = cpuid(base)
            if ebx == UInt32(XEN_CPUID_SIGNATURE_EBX) && ecx == UInt32(XEN_CPUID_SIGNATURE_ECX)
                && edx == UInt32(XEN_CPUID_SIGNATURE_EDX) && eax >= base + 2
            {
                let version = cpuid(base + 1).0
                let pages = cpuid(base + 2)
                return XenCPUID(
                    baseLeaf: base, maximumLeaf: eax, majorVersion: UInt16(version >> 16),
                    minorVersion: UInt16(truncatingIfNeeded: version), hypercallPages: pages.0, hypercallMSR: pages.1)
            }
            base += 0x100
        }
        return nil
    }
}

/// The xenstore and console pages and their event channels.
public struct XenBootChannels: Equatable, Sendable {
    /// Frame of the `xenstore_domain_interface` page.
    public var storeFrame: UInt64
    public var storePort: EventChannelPort
    /// Frame of the `xencons_interface` page.
    public var consoleFrame: UInt64
    public var consolePort: EventChannelPort

    public init(storeFrame: UInt64, storePort: EventChannelPort, consoleFrame: UInt64, consolePort: EventChannelPort) {
        self.storeFrame = storeFrame
        self.storePort = storePort
        self.consoleFrame = consoleFrame
        self.consolePort = consolePort
    }

    /// A PV guest's channels, from `start_info` (machine frames; `console.domU`).
    public init(startInfo: UnsafePointer<start_info>) {
        storeFrame = UInt64(startInfo.pointee.store_mfn)
        storePort = startInfo.pointee.store_evtchn
        consoleFrame = UInt64(startInfo.pointee.console.domU.mfn)
        consolePort = startInfo.pointee.console.domU.evtchn
    }

    /// An HVM/PVH guest's channels, from the HVM parameters (guest frames).
    public static func fromHVMParameters<H: Hypercalls>(_ hypervisor: inout H) throws(HypercallError) -> XenBootChannels {
        XenBootChannels(
            storeFrame: try hypervisor.hvmParameter(UInt32(HVM_PARAM_STORE_PFN)),
            storePort: EventChannelPort(truncatingIfNeeded: try hypervisor.hvmParameter(UInt32(HVM_PARAM_STORE_EVTCHN))),
            consoleFrame: try hypervisor.hvmParameter(UInt32(HVM_PARAM_CONSOLE_PFN)),
            consolePort: EventChannelPort(truncatingIfNeeded: try hypervisor.hvmParameter(UInt32(HVM_PARAM_CONSOLE_EVTCHN))))
    }
}
