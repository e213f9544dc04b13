// PlatformConfiguration: the named targets an application can be baked for,
// in the manner of rumprun-bake's configurations (hw_generic, hw_virtio,
// xen_pv): which platform code goes in and which loaders can start it.

/// A named platform configuration.
public struct PlatformConfiguration: Equatable, Sendable {
    public enum Platform: String, Sendable { case hw, xen }

    public var name: String
    public var platform: Platform
    public var summary: String
    public var details: String
    /// Guest modules linked into the image, in dependency order.
    public var modules: [String]
    public var defaultFormat: ImageFormat
    /// Why the configuration cannot be baked yet; nil when it can.
    public var unavailableReason: String?

    public static let all: [PlatformConfiguration] = [
        PlatformConfiguration(
            name: "hw_generic", platform: .hw,
            summary: "bare x86-64 hardware and QEMU/KVM, every hw driver",
            details: """
                Boots from PVH loaders (QEMU -M microvm, the default for rumprun-cli) and
                from multiboot loaders (QEMU -M pc through SeaBIOS, GRUB) when baked with
                --format multiboot or converted by rumprun-cli. Console on the 16550 serial
                port (COM1). Exit status through QEMU's isa-debug-exit device (port 0xf4).
                Drivers: PCI, virtio-net/blk/rng, e1000 (use --machine pc for PCI devices).
                Platform modules: CPUPrimitives, DeviceInterfaces, BareMetalKit, NetStack, Rumprun.
                """,
            modules: ["CPUPrimitives", "DeviceInterfaces", "BareMetalKit", "NetStack", "Rumprun"], defaultFormat: .pvh, unavailableReason: nil),
        PlatformConfiguration(
            name: "hw_virtio", platform: .hw,
            summary: "cloud and QEMU/KVM guests with virtio devices only",
            details: """
                The hw platform for virtual machines: like hw_generic, meant to carry only the
                virtio drivers (virtio-net, virtio-blk, virtio-rng) once they exist, for a smaller
                image. Today it links the same platform modules as hw_generic.
                Platform modules: CPUPrimitives, DeviceInterfaces, BareMetalKit, NetStack, Rumprun.
                """,
            modules: ["CPUPrimitives", "DeviceInterfaces", "BareMetalKit", "NetStack", "Rumprun"], defaultFormat: .pvh, unavailableReason: nil),
        PlatformConfiguration(
            name: "xen_pv", platform: .xen,
            summary: "Xen guests: PVH (xl type=\"pvh\", the launcher's) and PV entry",
            details: """
                One ELF64 image for Xen. As a PVH domain it enters at the hw platform's PVH entry
                (XEN_ELFNOTE_PHYS32_ENTRY), finds Xen through CPUID, has Xen fill the hypercall page
                through the MSR, maps shared info, reads the console and xenstore pages from the HVM
                parameters, and uses the console ring and SCHEDOP_shutdown; before main it binds the
                event upcall and attaches the xenbus vif/vbd devices (netfront, blkfront) for
                Network and StorageDevice. It also carries the PV notes (XEN_ELFNOTE_ENTRY,
                HYPERCALL_PAGE, VIRT_BASE, "xen-3.0", "generic" loader): the PV entry checks
                start_info, maps memory through the P2M list, installs traps, callbacks and the timer,
                attaches the same frontends and runs the application on one vCPU. Never run on a real
                Xen host from this repository (Docs/xen.md).
                Platform modules: CPUPrimitives, DeviceInterfaces, BareMetalKit, CXen, XenPVKit, NetStack, Rumprun.
                """,
            modules: ["CPUPrimitives", "DeviceInterfaces", "BareMetalKit", "CXen", "XenPVKit", "NetStack", "Rumprun"],
            defaultFormat: .pvh, unavailableReason: nil),
    ]

    public static var names: [String] { all.map(\.name) }

    /// The configuration called `name`.
    public static func named(_ name: String) throws(BakeError) -> PlatformConfiguration {
        guard let configuration = all.first(where: { $0.name == name }) else {
            throw .unknownConfiguration(name, known: names)
        }
        return configuration
    }
}
