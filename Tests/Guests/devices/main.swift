// devices: drives QEMU's real PCI devices with the BareMetalKit drivers
// (integration tests): writes, flushes and reads back a pattern on every
// virtio-blk disk, sends an ARP request for QEMU's user-net gateway on every
// NIC and waits for the reply, reads virtio-rng. Exits with the number of
// failures.
import BareMetalKit
import DeviceInterfaces
import Rumprun

let access = PortConfigurationAccess(ports: PortRegisters(base: 0xCF8))
let dma = HeapDMAMemory()
var failures: Int32 = 0

func hex(_ bytes: [UInt8]) -> String {
    let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    var text = ""
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return text
}

/// The byte pattern written at sector 8; the host test checks it in the file.
func pattern(_ index: Int) -> UInt8 { UInt8(truncatingIfNeeded: index &* 7 &+ 3) }

func exerciseDisk<Transport: VirtioTransport>(_ transport: Transport, label: String) {
    do throws(VirtioError) {
        var disk = try VirtioBlock(transport: transport, dma: dma)
        let size = 64 * 1024 + 512
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
        for index in 0..<size { buffer[index] = pattern(index) }
        do throws(BlockDeviceError) {
            _ = try disk.perform(BlockRequest(operation: .write, sector: 8, buffer: buffer, tag: 1))
            _ = try disk.perform(BlockRequest(operation: .flush, sector: 0, buffer: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: 2))
            for index in 0..<size { buffer[index] = 0 }
            _ = try disk.perform(BlockRequest(operation: .read, sector: 8, buffer: buffer, tag: 3))
            var intact = true
            for index in 0..<size where buffer[index] != pattern(index) { intact = false }
            print("\(label): \(disk.sectorCount) sectors, wrote, flushed and read back \(size) bytes: \(intact ? "match" : "MISMATCH")")
            if !intact { failures += 1 }
        } catch {
            print("\(label): request failed")
            failures += 1
        }
        try? disk.shutdown()
    } catch {
        print("\(label): init failed, code \(error.code)")
        failures += 1
    }
}

func exerciseNetwork<Interface: NetworkInterface>(_ nic: inout Interface, label: String) {
    let m = nic.macAddress.bytes
    // ARP request: who has 10.0.2.2 (QEMU's user-net gateway)? tell 10.0.2.15.
    var arp: [UInt8] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, m.0, m.1, m.2, m.3, m.4, m.5, 0x08, 0x06,
        0, 1, 8, 0, 6, 4, 0, 1, m.0, m.1, m.2, m.3, m.4, m.5, 10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2,
    ]
    while arp.count < 60 { arp.append(0) }
    var replied = false
    do throws(NetworkInterfaceError) {
        let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: arp.count, alignment: 16)
        defer { frame.deallocate() }
        for index in 0..<arp.count { frame[index] = arp[index] }
        // Like ARP itself, retransmit: a frame sent while the link is still
        // coming up after reset is lost.
        var attempts = 0
        while !replied && attempts < 20 {
            try nic.send(frame: UnsafeRawBufferPointer(frame))
            attempts += 1
            var spins = 0
            while !replied && spins < 2_000_000 {
                _ = try nic.receive(limit: 4) { frame in
                    // An ARP reply (opcode 2) from 10.0.2.2.
                    if frame.count >= 42 && frame[12] == 0x08 && frame[13] == 0x06 && frame[21] == 2
                        && frame[28] == 10 && frame[29] == 0 && frame[30] == 2 && frame[31] == 2
                    {
                        replied = true
                    }
                }
                spins += 1
            }
        }
    } catch {
        print("\(label): network error")
    }
    print("\(label): mac \(hex([m.0, m.1, m.2, m.3, m.4, m.5])), ARP reply from 10.0.2.2: \(replied ? "yes" : "no")")
    if !replied { failures += 1 }
}

for function in PCIEnumerator.enumerate(access) {
    let address = function.address
    if function.vendorID == 0x8086 && function.deviceID == 0x100E {
        do throws(E1000Error) {
            var nic = try E1000(function: address, access: access, mapper: IdentityMappedIO(), dma: dma)
            exerciseNetwork(&nic, label: "e1000")
            nic.shutdown()
        } catch {
            print("e1000: init failed")
            failures += 1
        }
        continue
    }
    guard let type = VirtioPCI.deviceType(of: function) else { continue }
    guard let transport = try? VirtioPCIModernTransport(function: address, access: access, mapper: IdentityMappedIO()) else {
        print("virtio device type \(type): no modern transport")
        failures += 1
        continue
    }
    switch type {
    case VirtioPCI.blockType:
        exerciseDisk(transport, label: "virtio-blk")
    case VirtioPCI.networkType:
        if var nic = try? VirtioNetwork(transport: transport, dma: dma) {
            exerciseNetwork(&nic, label: "virtio-net")
            try? nic.shutdown()
        } else {
            print("virtio-net: init failed")
            failures += 1
        }
    case VirtioPCI.entropyType:
        if var rng = try? VirtioEntropy(transport: transport, dma: dma) {
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
            do throws(VirtioError) {
                try rng.fill(bytes)
                print("virtio-rng: 16 bytes")
            } catch {
                print("virtio-rng: error \(error.code)")
                failures += 1
            }
        } else {
            print("virtio-rng: init failed")
            failures += 1
        }
    default:
        break
    }
}
print("devices: \(failures) failures")
Rumprun.exit(failures)
