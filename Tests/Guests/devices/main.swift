// devices: drives QEMU's real PCI devices with the BareMetalKit drivers
// (integration tests): writes, flushes and reads back a pattern on every
// virtio-blk disk, sends an ARP request for QEMU's user-net gateway on every
// NIC and waits for the reply, reads virtio-rng. Exits with the number of
// failures.
import BareMetalKit
import DeviceInterfaces
import Rumprun

let access = PlatformPCI.access
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

switch access.mechanism {
case .ports: print("pci: ports 0xcf8")
case .ecam(let base, _, _): print("pci: ecam \(hex64(base)), \(PlatformPCI.assignments.filter { !$0.byFirmware }.count) BARs assigned by the guest")
}
if let error = PlatformPCI.assignmentError {
    switch error {
    case .windowExhausted(let function, let index, let size, _):
        print("pci: BAR assignment failed: no room for BAR \(index) of \(function.bus):\(function.device).\(function.function), \(size) bytes")
    default:
        print("pci: BAR assignment failed")
    }
    failures += 1
}

func hex64(_ value: UInt64) -> String {
    var bytes: [UInt8] = []
    var shift = 56
    while shift >= 0 {
        bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        shift -= 8
    }
    while bytes.count > 1 && bytes[0] == 0 { bytes.removeFirst() }
    return "0x" + hex(bytes)
}

/// The rumpcomp_pci_* hypercalls against the enumerator and the page allocator.
func exerciseRumpPCI() {
    var problems = 0
    func fail(_ what: StaticString) {
        print("rumpcomp: FAILED: \(what)")
        problems += 1
    }
    if rumpcomp_pci_iospace_init() != 0 { fail("iospace_init") }
    let functions = PlatformPCI.functions
    for function in functions {
        let a = function.address
        var identity: CUnsignedInt = 0
        var classWord: CUnsignedInt = 0
        if rumpcomp_pci_confread(CUnsignedInt(a.bus), CUnsignedInt(a.device), CUnsignedInt(a.function), 0, &identity) != 0
            || identity != CUnsignedInt(function.vendorID) | CUnsignedInt(function.deviceID) << 16
        {
            fail("confread of the ID register differs from the enumerator")
        }
        // Byte offsets inside a register read the whole aligned register.
        if rumpcomp_pci_confread(CUnsignedInt(a.bus), CUnsignedInt(a.device), CUnsignedInt(a.function), 0x0B, &classWord) != 0
            || UInt8(truncatingIfNeeded: classWord >> 24) != function.baseClass
            || UInt8(truncatingIfNeeded: classWord >> 16) != function.subclass
        {
            fail("confread of the class register differs from the enumerator")
        }
    }
    // Interrupt Line (0x3C) is read-write scratch for software.
    if let target = functions.last?.address {
        let (b, d, f) = (CUnsignedInt(target.bus), CUnsignedInt(target.device), CUnsignedInt(target.function))
        var original: CUnsignedInt = 0
        var changed: CUnsignedInt = 0
        _ = rumpcomp_pci_confread(b, d, f, 0x3C, &original)
        if rumpcomp_pci_confwrite(b, d, f, 0x3C, (original & ~0xFF) | 0x5A) != 0 { fail("confwrite") }
        _ = rumpcomp_pci_confread(b, d, f, 0x3C, &changed)
        if changed & 0xFF != 0x5A { fail("confwrite did not reach the register") }
        _ = rumpcomp_pci_confwrite(b, d, f, 0x3C, original)
    }
    var ignored: CUnsignedInt = 0
    if rumpcomp_pci_confread(0, 32, 0, 0, &ignored) != 22 { fail("device 32 accepted") }
    if rumpcomp_pci_confread(0, 0, 0, 4096, &ignored) != 22 { fail("register 4096 accepted") }
    var absent: CUnsignedInt = 0
    if rumpcomp_pci_confread(0, 31, 7, 0, &absent) != 0 || absent != 0xFFFF_FFFF { fail("absent function does not read all ones") }

    // DMA memory: aligned, zeroed, physically contiguous, identity-mapped.
    let freeBefore = Rumprun.memoryStatistics?.freePages ?? 0
    var physical: CUnsignedLong = 0
    var virtual: CUnsignedLong = 0
    if rumpcomp_pci_dmalloc(3 * 4096 + 100, 16384, &physical, &virtual) != 0 {
        fail("dmalloc")
    } else {
        if physical % 16384 != 0 { fail("dmalloc alignment") }
        if physical != virtual { fail("dmalloc: physical differs from virtual under the identity map") }
        let base = UnsafeMutableRawPointer(bitPattern: UInt(virtual))!
        for page in 0..<4 where rumpcomp_pci_virt_to_mach(base + page * 4096 + 8) != physical + CUnsignedLong(page * 4096 + 8) {
            fail("dmalloc memory is not physically contiguous")
        }
        var zero = true
        for offset in 0..<(4 * 4096) where base.load(fromByteOffset: offset, as: UInt8.self) != 0 { zero = false }
        if !zero { fail("dmalloc memory is not zeroed") }
        // Two adjacent segments map; a gap is refused.
        var segments: [CUnsignedLong] = [physical, 8192, virtual, physical + 8192, 8192, virtual + 8192]
        var mapped: UnsafeMutableRawPointer? = nil
        let contiguous = segments.withUnsafeMutableBytes { rumpcomp_pci_dmamem_map($0.baseAddress, 2, 16384, &mapped) }
        if contiguous != 0 || mapped != base { fail("dmamem_map of contiguous segments") }
        segments[3] += 4096
        let gap = segments.withUnsafeMutableBytes { rumpcomp_pci_dmamem_map($0.baseAddress, 2, 16384, &mapped) }
        if gap != 45 { fail("dmamem_map accepted a gap") }
        rumpcomp_pci_dmafree(virtual, 3 * 4096 + 100)
        if Rumprun.memoryStatistics?.freePages != freeBefore { fail("dmafree did not return the pages") }
    }
    if rumpcomp_pci_dmalloc(4096, 3, &physical, &virtual) != 22 { fail("dmalloc accepted alignment 3") }
    // virt_to_mach of an unmapped address (the null page) is 0.
    if rumpcomp_pci_virt_to_mach(UnsafeMutableRawPointer(bitPattern: 0x10)) != 0 { fail("virt_to_mach of the null page") }

    // Device memory: a memory BAR maps to itself; an unmapped range is refused.
    if let bar = PlatformPCI.assignments.first(where: { !$0.bar.isIO && $0.bar.address < 0x1_0000_0000 }) ?? firstMemoryBAR() {
        if rumpcomp_pci_map(CUnsignedLong(bar.bar.address), CUnsignedLong(bar.bar.size)) != UnsafeMutableRawPointer(bitPattern: UInt(bar.bar.address)) {
            fail("map of a memory BAR")
        }
    }
    if rumpcomp_pci_map(0x40_0000_0000, 4096) != nil { fail("map of unmapped memory") }

    // Interrupts: the line is recorded for valid cookies only.
    if let target = functions.last?.address,
        rumpcomp_pci_irq_map(CUnsignedInt(target.bus), CUnsignedInt(target.device), CUnsignedInt(target.function), 11, 3) != 0
    {
        fail("irq_map")
    }
    if rumpcomp_pci_irq_map(0, 0, 0, 11, 1000) != 22 { fail("irq_map accepted cookie 1000") }
    // Establishing with a real handler is tested with the rumpuser guest
    // (RumpUserGuestTests); here only the refusal of a NULL handler.
    if rumpcomp_pci_irq_establish(3, nil, nil) != nil { fail("irq_establish accepted a NULL handler") }
    print("rumpcomp: \(functions.count) functions, config reads match, dmalloc aligned and contiguous, irq_establish refuses NULL, \(problems) problems")
    if problems > 0 { failures += 1 }
}

func firstMemoryBAR() -> PCIBARAssignment? {
    for function in PlatformPCI.functions where function.headerType == 0 {
        guard let bars = try? PCIBAR.readAll(function.address, access: access) else { continue }
        for (index, bar) in bars.enumerated() {
            if let bar, !bar.isIO, bar.address != 0, bar.address < 0x1_0000_0000 {
                return PCIBARAssignment(function: function.address, index: index, bar: bar, byFirmware: true, window: nil)
            }
        }
    }
    return nil
}

for function in PlatformPCI.functions {
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
        // A transitional device with disable-modern=on: the legacy I/O header.
        if type == VirtioPCI.blockType, let legacy = try? VirtioPCILegacyTransport(function: address, access: access, ports: HardwarePortSpace()) {
            exerciseDisk(legacy, label: "virtio-blk (legacy)")
        } else {
            print("virtio device type \(type): no usable transport")
            failures += 1
        }
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
                let before = Rumprun.entropyReport
                try Platform.addEntropy(from: &rng, byteCount: 64)
                _ = Rumprun.random()
                let after = Rumprun.entropyReport
                let fed = after.externalBytes - before.externalBytes
                print("virtio-rng: fed \(fed) bytes to the entropy pool, reseeded: \(after.reseedCount > before.reseedCount ? "yes" : "no")")
                if fed != 64 || after.reseedCount <= before.reseedCount { failures += 1 }
            } catch {
                print("virtio-rng: error \(error.code)")
                failures += 1
            }
            try? rng.shutdown()
        } else {
            print("virtio-rng: init failed")
            failures += 1
        }
    default:
        break
    }
}
exerciseRumpPCI()
print("devices: \(failures) failures")
Rumprun.exit(failures)
