// DeviceProbe: a boot-time report of the PCI functions found (PCI Local Bus
// 3.0 §6.1 header fields), for the serial console and for QEMU smoke tests.
import DeviceInterfaces

/// Formats what enumeration found, one line per function:
/// `pci 00:03.0 1af4:1041 class 02.00.00 virtio-net bar4 mem64 0xfe000000+0x4000`.
public enum PCIProbeReport {
    /// A short name for functions the drivers here handle, else nil.
    public static func driverName(of function: PCIFunctionInfo) -> StaticString? {
        if function.vendorID == 0x8086 && function.deviceID == 0x100E { return "e1000" }
        switch VirtioPCI.deviceType(of: function) {
        case VirtioPCI.networkType: return "virtio-net"
        case VirtioPCI.blockType: return "virtio-blk"
        case VirtioPCI.entropyType: return "virtio-rng"
        default: return nil
        }
    }

    /// One report line (without the newline) for `function`; BARs are
    /// sized for type 0 functions.
    public static func line<Access: PCIConfigurationAccess>(for function: PCIFunctionInfo, access: Access) -> [UInt8] {
        var text: [UInt8] = []
        append("pci ", to: &text)
        hex(UInt64(function.address.bus), digits: 2, to: &text)
        text.append(0x3A)
        hex(UInt64(function.address.device), digits: 2, to: &text)
        text.append(0x2E)
        hex(UInt64(function.address.function), digits: 1, to: &text)
        text.append(0x20)
        hex(UInt64(function.vendorID), digits: 4, to: &text)
        text.append(0x3A)
        hex(UInt64(function.deviceID), digits: 4, to: &text)
        append(" class ", to: &text)
        hex(UInt64(function.baseClass), digits: 2, to: &text)
        text.append(0x2E)
        hex(UInt64(function.subclass), digits: 2, to: &text)
        text.append(0x2E)
        hex(UInt64(function.programmingInterface), digits: 2, to: &text)
        if let name = driverName(of: function) {
            text.append(0x20)
            append(name, to: &text)
        }
        if function.isBridge, let secondary = function.secondaryBus {
            append(" bridge to bus ", to: &text)
            hex(UInt64(secondary), digits: 2, to: &text)
        }
        guard function.headerType == 0 else { return text }
        do throws(PCIError) {
            for (index, bar) in try PCIBAR.readAll(function.address, access: access).enumerated() {
                guard let bar else { continue }
                append(" bar", to: &text)
                text.append(0x30 + UInt8(index))
                switch bar {
                case .io: append(" io ", to: &text)
                case .memory(_, _, let is64Bit, let prefetchable):
                    append(is64Bit ? " mem64" : " mem32", to: &text)
                    append(prefetchable ? "p " : " ", to: &text)
                }
                append("0x", to: &text)
                hex(bar.address, digits: 1, to: &text)
                append("+0x", to: &text)
                hex(bar.size, digits: 1, to: &text)
            }
        } catch {
            append(" (BARs unreadable)", to: &text)
        }
        return text
    }

    /// Report lines for every function reachable from bus 0.
    public static func lines<Access: PCIConfigurationAccess>(access: Access) -> [[UInt8]] {
        PCIEnumerator.enumerate(access).map { line(for: $0, access: access) }
    }

    static func append(_ text: StaticString, to bytes: inout [UInt8]) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    static func hex(_ value: UInt64, digits: Int, to bytes: inout [UInt8]) {
        var count = 1
        while count < 16 && value >> (4 * UInt64(count)) != 0 { count += 1 }
        count = max(count, digits)
        for position in (0..<count).reversed() {
            let digit = UInt8((value >> (4 * UInt64(position))) & 0xF)
            bytes.append(digit < 10 ? 0x30 + digit : 0x57 + digit)
        }
    }
}

#if hasFeature(Embedded)
/// Boot-time device discovery for the guest.
public enum DeviceProbe {
    /// Enumerates PCI through ports 0xCF8/0xCFC and prints one line per
    /// function on the console. Safe on machines without PCI (QEMU microvm
    /// without `pcie=on`): every read returns all ones and nothing prints.
    public static func printPCIFunctions() {
        let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
        for line in PCIProbeReport.lines(access: access) {
            Platform.write(line)
            Platform.write("\n")
        }
    }

    /// Starts the driver of every supported function found through
    /// 0xCF8/0xCFC, prints what it reports (virtio-blk capacity and serial,
    /// virtio-net and e1000 MAC and link, eight virtio-rng bytes) or the
    /// error code, and shuts it down again. Nothing is written to disks or
    /// networks. Modern virtio is preferred; transitional devices fall back
    /// to the legacy transport.
    public static func printDevices() {
        let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
        let dma = HeapDMAMemory()
        for function in PCIEnumerator.enumerate(access) {
            guard let name = PCIProbeReport.driverName(of: function) else { continue }
            Platform.write(name)
            Platform.write(" ")
            Platform.write(Array(PCIProbeReport.line(for: function, access: access)[4..<11]))
            Platform.write(": ")
            let address = function.address
            if function.vendorID == E1000<MMIORegisters, HeapDMAMemory>.vendorID {
                do throws(E1000Error) {
                    let nic = try E1000<MMIORegisters, HeapDMAMemory>(function: address, access: access, mapper: IdentityMappedIO(), dma: dma)
                    describe(nic)
                    nic.shutdown()
                } catch {
                    Platform.write("driver failed\n")
                }
                continue
            }
            var modern: VirtioPCIModernTransport<MMIORegisters>? = nil
            do throws(VirtioError) {
                modern = try VirtioPCIModernTransport(function: address, access: access, mapper: IdentityMappedIO())
            } catch {
                modern = nil
            }
            do throws(VirtioError) {
                if let modern {
                    Platform.write("modern, ")
                    try describe(type: VirtioPCI.deviceType(of: function) ?? 0, transport: modern, dma: dma)
                } else if !VirtioPCI.isModernOnly(function) {
                    Platform.write("legacy, ")
                    let legacy = try VirtioPCILegacyTransport(function: address, access: access, ports: HardwarePortSpace())
                    try describe(type: VirtioPCI.deviceType(of: function) ?? 0, transport: legacy, dma: dma)
                } else {
                    Platform.write("no usable transport\n")
                }
            } catch {
                Platform.write("driver failed, code ")
                Platform.writeDecimal(UInt64(error.code))
                Platform.write("\n")
            }
        }
    }

    static func describe<Transport: VirtioTransport>(type: Int, transport: Transport, dma: HeapDMAMemory) throws(VirtioError) {
        switch type {
        case VirtioPCI.blockType:
            var disk = try VirtioBlock(transport: transport, dma: dma)
            Platform.write("capacity ")
            Platform.writeDecimal(disk.sectorCount)
            Platform.write(" sectors")
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 16)
            do throws(BlockDeviceError) {
                let identifier = try disk.identifier(scratch: scratch)
                Platform.write(", serial \"")
                Platform.write(identifier)
                Platform.write("\"")
            } catch {
                Platform.write(", no serial")
            }
            try disk.shutdown()
            scratch.deallocate()
        case VirtioPCI.networkType:
            let nic = try VirtioNetwork(transport: transport, dma: dma)
            describe(nic)
            try nic.shutdown()
            return
        case VirtioPCI.entropyType:
            var rng = try VirtioEntropy(transport: transport, dma: dma)
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 8, alignment: 8)
            try rng.fill(bytes)
            Platform.write("random ")
            Platform.writeHex(bytes.load(as: UInt64.self))
            try rng.shutdown()
            bytes.deallocate()
        default:
            Platform.write("no driver")
        }
        Platform.write("\n")
    }

    static func describe<Interface: NetworkInterface>(_ interface: Interface) {
        let mac = interface.macAddress.bytes
        var text: [UInt8] = []
        PCIProbeReport.append("mac ", to: &text)
        for (index, byte) in [mac.0, mac.1, mac.2, mac.3, mac.4, mac.5].enumerated() {
            if index > 0 { text.append(0x3A) }
            PCIProbeReport.hex(UInt64(byte), digits: 2, to: &text)
        }
        PCIProbeReport.append(interface.isLinkUp ? ", link up\n" : ", link down\n", to: &text)
        Platform.write(text)
    }
}
#endif
