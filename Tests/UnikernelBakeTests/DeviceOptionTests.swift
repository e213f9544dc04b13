// Device options (-I, -W, -b): parsing, QEMU devices, the xl configuration,
// and the guest reading back what the launcher wrote.
import BareMetalKit
import Foundation
import Testing

@testable import UnikernelBake

@Suite struct DeviceOptionTests {
    func options(_ interfaces: [String], _ addresses: [String], _ disks: [String], platform: LaunchOptions.Accelerator = .qemu) throws -> LaunchOptions {
        var options = LaunchOptions(image: "/images/web.img")
        options.accelerator = platform
        options.networkInterfaces = try interfaces.enumerated().map { try NetworkInterfaceOption.parse($1, index: $0) }
        try applyAddressOptions(addresses, to: &options.networkInterfaces)
        options.blockDevices = try disks.enumerated().map { try BlockDeviceOption.parse($1, index: $0) }
        return options
    }

    @Test func interfacesAndDisksBecomeQEMUDevices() throws {
        var launch = try options(["net0,virtio-net,user", "net1,e1000,tap,ifname=tap0,script=no"], [], [])
        // A comma in a path is doubled for QEMU's option parser.
        launch.blockDevices = [BlockDeviceOption(tag: "blk0", hostPath: "/srv/a,b.img", mountPoint: nil)]
        let arguments = Launcher.qemuArguments(launch, kernel: "k", console: "stdio")
        #expect(Array(arguments.prefix(2)) == ["-M", "microvm,pcie=on"])
        let joined = arguments.joined(separator: " ")
        #expect(joined.contains("-netdev user,id=net0 -device virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"))
        #expect(joined.contains("-netdev tap,id=net1,ifname=tap0,script=no -device e1000,netdev=net1,mac=52:54:00:12:34:57"))
        #expect(joined.contains("-drive file=/srv/a,,b.img,if=none,id=blk0,format=raw -device virtio-blk-pci,drive=blk0"))
        // Without devices, microvm stays PCI-free.
        #expect(Array(Launcher.qemuArguments(LaunchOptions(image: "x"), kernel: "k", console: "stdio").prefix(2)) == ["-M", "microvm"])
    }

    @Test func theGuestReadsBackWhatTheLauncherWrote() throws {
        let launch = try options(["net0,virtio-net,user", "net1,e1000,user"], ["net0,inet,dhcp", "net1,inet,static,10.0.2.15/24,10.0.2.2"], ["/d.img,/data"])
        let guest = try GuestConfiguration(commandLine: Array(Launcher.guestConfigurationJSON(launch).utf8))
        #expect(guest.networkInterfaces == [
            GuestNetworkInterface(tag: "net0", driver: "virtio-net", mac: "52:54:00:12:34:56", addressing: .dhcp),
            GuestNetworkInterface(tag: "net1", driver: "e1000", mac: "52:54:00:12:34:57", addressing: .staticAddress(address: "10.0.2.15", prefixLength: 24, gateway: "10.0.2.2")),
        ])
        #expect(guest.blockDevices == [GuestBlockDevice(tag: "blk0", driver: "virtio-blk", mountPoint: "/data")])
    }

    @Test(arguments: [
        ("net0,virtio-net", "-I expects tag,driver,backend[,options] (e.g. net0,virtio-net,user), not 'net0,virtio-net'"),
        ("net0,rtl8139,user", "-I: unknown driver 'rtl8139' (known: virtio-net, e1000, xen-netfront)"),
        ("net 0,e1000,user", "-I: tag 'net 0' must be letters, digits, '-' or '_'"),
    ])
    func badInterfacesAreNamed(text: String, message: String) {
        #expect(throws: LaunchError.invalidOption(message)) { try NetworkInterfaceOption.parse(text, index: 0) }
    }

    @Test(arguments: [
        ("net0,inet,static,10.0.0.300/24", "-W: '10.0.0.300/24' is not ADDRESS/PREFIX (e.g. 10.0.0.2/24)"),
        ("net0,inet,static,10.0.0.3/33", "-W: '10.0.0.3/33' is not ADDRESS/PREFIX (e.g. 10.0.0.2/24)"),
        ("net0,inet,static,10.0.0.3/24,gw", "-W: gateway 'gw' is not an IPv4 address"),
        ("net0,inet,bootp", "-W expects tag,inet,dhcp or tag,inet,static,ADDRESS/PREFIX[,GATEWAY], not 'net0,inet,bootp'"),
        ("net0,inet6,dhcp", "-W expects tag,inet,dhcp or tag,inet,static,ADDRESS/PREFIX[,GATEWAY], not 'net0,inet6,dhcp'"),
        ("net7,inet,dhcp", "-W: no interface tagged 'net7' (add it with -I net7,driver,backend)"),
    ])
    func badAddressesAreNamed(text: String, message: String) throws {
        var interfaces = [try NetworkInterfaceOption.parse("net0,virtio-net,user", index: 0)]
        #expect(throws: LaunchError.invalidOption(message)) { try applyAddressOptions([text], to: &interfaces) }
    }

    @Test func driversMustMatchThePlatform() throws {
        #expect(throws: LaunchError.invalidOption("-I net0: driver xen-netfront does not work on the qemu platform")) {
            try Launcher.validate(try options(["net0,xen-netfront,bridge=xenbr0"], [], []))
        }
        #expect(throws: LaunchError.invalidOption("-I net0: driver virtio-net does not work on the xen platform")) {
            try Launcher.validate(try options(["net0,virtio-net,user"], [], [], platform: .xen))
        }
        #expect(throws: LaunchError.invalidOption("-I: tag 'net0' is used twice")) {
            try Launcher.validate(try options(["net0,e1000,user", "net0,virtio-net,user"], [], []))
        }
        #expect(throws: LaunchError.invalidOption("-b: mount point 'data' must be an absolute path")) { try BlockDeviceOption.parse("/d.img,data", index: 0) }
    }

    /// Reads `key = value` lines of an xl configuration.
    func parseXL(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        return values
    }

    @Test func xlConfigurationFollowsTheOptions() throws {
        var launch = try options(["net0,xen-netfront,bridge=xenbr0"], ["net0,inet,dhcp"], ["/srv/disk.img,/data", "/srv/two.img"], platform: .xen)
        launch.memoryMegabytes = 128
        launch.name = "web"
        let values = parseXL(XenLauncher.domainConfiguration(launch))
        #expect(values["name"] == "\"web\"")
        #expect(values["type"] == "\"pvh\"")
        #expect(values["kernel"] == "\"/images/web.img\"")
        #expect(values["memory"] == "128")
        #expect(values["on_poweroff"] == "\"destroy\"")
        #expect(values["on_crash"] == "\"preserve\"")
        #expect(values["vif"] == "[ 'mac=00:16:3e:12:34:56,bridge=xenbr0' ]")
        #expect(values["disk"] == "[ 'format=raw,vdev=xvda,access=rw,target=/srv/disk.img', 'format=raw,vdev=xvdb,access=rw,target=/srv/two.img' ]")
        let dry = try XenLauncher.dryRun(launch, configurationPath: "/tmp/web.xl.cfg")
        #expect(dry.contains("xl create -p /tmp/web.xl.cfg\n"))
        #expect(dry.contains("xenstore-write /local/domain/DOMID/rumprun/cfg '{\"argv\":[\"web\"]"))
        #expect(dry.hasSuffix("xl unpause DOMID\n"))
        #expect(throws: LaunchError.invalidOption("expected xen:<domid>, not 'xen:abc'")) { try XenLauncher.stop("xen:abc") }
    }
}
