// BAR assignment without firmware (QEMU microvm,pcie=on) against the PCI
// configuration-space model: alignment, windows, reserved firmware ranges,
// 64-bit placement, exhaustion errors, command register.
import Testing
@testable import BareMetalKit

struct PCIAssignmentTests {
    /// A microvm-like bus 0: the GPEX host bridge and virtio-pci functions
    /// whose BARs all read 0 (nobody assigned them).
    func microvmSpace() -> PCIConfigurationModel {
        let space = PCIConfigurationModel()
        space.add(0, 0, 0, PCIFunctionModel(vendor: 0x1B36, device: 0x0008, classCode: 0x06_00_00))
        let net = PCIFunctionModel(vendor: 0x1AF4, device: 0x1000, classCode: 0x02_00_00)
        net.setBAR(0, .io32, size: 32, address: 0)
        net.setBAR(1, .memory32, size: 4096, address: 0)
        net.setBAR(4, .memory64, size: 16384, address: 0, prefetchable: true)
        space.add(0, 1, 0, net)
        let blk = PCIFunctionModel(vendor: 0x1AF4, device: 0x1001, classCode: 0x01_00_00)
        blk.setBAR(0, .io32, size: 64, address: 0)
        blk.setBAR(1, .memory32, size: 4096, address: 0)
        blk.setBAR(4, .memory64, size: 16384, address: 0, prefetchable: true)
        space.add(0, 2, 0, blk)
        let tiny = PCIFunctionModel(vendor: 0x8086, device: 0x100E, classCode: 0x02_00_00)
        tiny.setBAR(0, .memory32, size: 128 * 1024, address: 0)
        tiny.setBAR(1, .io32, size: 64, address: 0)
        space.add(0, 3, 0, tiny)
        return space
    }

    let microvm = PCIHostBridgeResources.qemuMicrovm(physicalAddressBits: 40)

    func checkLayout(_ assignments: [PCIBARAssignment], space: PCIConfigurationModel, resources: PCIHostBridgeResources) throws {
        var ranges: [(UInt64, UInt64, Bool)] = []
        for assignment in assignments {
            let bar = assignment.bar
            #expect(bar.address % bar.size == 0, "\(assignment) not naturally aligned")
            if !bar.isIO { #expect(bar.address % 4096 == 0) }
            // The register now decodes to what the assigner reports.
            let reread = try #require(try PCIBAR.read(assignment.function, index: assignment.index, access: space))
            #expect(reread == bar)
            switch assignment.window {
            case .memory32?:
                #expect(bar.address >= resources.memory32.base && bar.address + bar.size <= resources.memory32.end)
            case .memory64?:
                let window = try #require(resources.memory64)
                #expect(bar.address >= window.base && bar.address + bar.size <= window.end)
            case .io?:
                let window = try #require(resources.io)
                #expect(bar.address >= window.base && bar.address + bar.size <= window.end)
            case nil:
                #expect(assignment.byFirmware)
            }
            ranges.append((bar.address, bar.address + bar.size, bar.isIO))
        }
        for (i, a) in ranges.enumerated() {
            for b in ranges[(i + 1)...] where a.2 == b.2 {
                #expect(!(a.0 < b.1 && b.0 < a.1), "overlap \(a) \(b)")
            }
        }
    }

    @Test func microvmDevicesGetAlignedDisjointBARsInTheWindows() throws {
        let space = microvmSpace()
        let functions = PCIEnumerator.enumerate(space)
        #expect(functions.count == 4)
        let assignments = try PCIResourceAssigner.assign(functions, resources: microvm, access: space)
        // No I/O window on microvm: the three I/O BARs stay unassigned.
        #expect(assignments.count == 5)
        #expect(assignments.allSatisfy { !$0.bar.isIO && $0.window == .memory32 && !$0.byFirmware })
        try checkLayout(assignments, space: space, resources: microvm)
        // Largest first: the 128 KiB BAR opens the window.
        #expect(assignments.first { $0.function.device == 3 }?.bar.address == 0xC000_0000)
        for device: UInt8 in 1...3 {
            let command = space.read16(PCIAddress(bus: 0, device: device, function: 0), offset: PCIHeader.command)
            #expect(command & PCIHeader.commandMemorySpace != 0)
            #expect(command & PCIHeader.commandBusMaster != 0)
            #expect(command & PCIHeader.commandIOSpace == 0)
            // Sizing and writing never happened with decoding on.
            #expect(space.functions[PCIAddress(bus: 0, device: device, function: 0)]!.sizingWhileDecoding.isEmpty)
        }
        // The host bridge has no BARs and is left alone.
        #expect(space.read16(PCIAddress(bus: 0, device: 0, function: 0), offset: PCIHeader.command) == 0)
    }

    @Test func anIOWindowTakesTheIOBARs() throws {
        let space = microvmSpace()
        var resources = microvm
        resources.io = PCIWindow(base: 0x1000, size: 0x1000)
        let assignments = try PCIResourceAssigner.assign(PCIEnumerator.enumerate(space), resources: resources, access: space)
        #expect(assignments.filter(\.bar.isIO).count == 3)
        try checkLayout(assignments, space: space, resources: resources)
        let command = space.read16(PCIAddress(bus: 0, device: 1, function: 0), offset: PCIHeader.command)
        #expect(command & PCIHeader.commandIOSpace != 0)
    }

    @Test func firmwareAssignedBARsAreKeptAndAvoided() throws {
        let space = microvmSpace()
        let assigned = PCIFunctionModel(vendor: 0x1234, device: 0x1111, classCode: 0x03_00_00)
        assigned.setBAR(0, .memory32, size: 0x2_0000, address: 0xC002_0000)
        assigned.setBAR(2, .memory32, size: 0x1000, address: 0)
        space.add(0, 4, 0, assigned)
        let assignments = try PCIResourceAssigner.assign(PCIEnumerator.enumerate(space), resources: microvm, access: space)
        let kept = try #require(assignments.first { $0.function.device == 4 && $0.index == 0 })
        #expect(kept.byFirmware && kept.bar.address == 0xC002_0000)
        try checkLayout(assignments, space: space, resources: microvm)
    }

    @Test func aLarge64BitBARGoesAbove4GiBWhenTheLowWindowIsTooSmall() throws {
        let space = microvmSpace()
        let big = PCIFunctionModel(vendor: 0x1234, device: 0x2222, classCode: 0x03_00_00)
        big.setBAR(0, .memory64, size: 1 << 30, address: 0, prefetchable: true)
        space.add(0, 5, 0, big)
        let assignments = try PCIResourceAssigner.assign(PCIEnumerator.enumerate(space), resources: microvm, access: space)
        let placed = try #require(assignments.first { $0.function.device == 5 })
        #expect(placed.window == .memory64)
        #expect(placed.bar.address == 0xC0_0000_0000)
        try checkLayout(assignments, space: space, resources: microvm)
    }

    @Test func exhaustedWindowsAreTypedErrors() throws {
        // A 1 GiB 32-bit BAR cannot fit the 512 MiB window.
        let space = microvmSpace()
        let big = PCIFunctionModel(vendor: 0x1234, device: 0x3333, classCode: 0x03_00_00)
        big.setBAR(0, .memory32, size: 1 << 30, address: 0)
        space.add(0, 6, 0, big)
        #expect(throws: PCIAssignmentError.windowExhausted(function: PCIAddress(bus: 0, device: 6, function: 0), index: 0, size: 1 << 30, window: .memory32)) {
            try PCIResourceAssigner.assign(PCIEnumerator.enumerate(space), resources: microvm, access: space)
        }
        // 64-bit BARs with no 64-bit window: three 256 MiB BARs, room for two.
        let crowded = PCIConfigurationModel()
        for device: UInt8 in 0..<3 {
            let function = PCIFunctionModel(vendor: 0x1234, device: 0x4444, classCode: 0x03_00_00)
            function.setBAR(0, .memory64, size: 256 << 20, address: 0)
            crowded.add(0, device, 0, function)
        }
        var noHigh = microvm
        noHigh.memory64 = nil
        #expect(throws: PCIAssignmentError.windowExhausted(function: PCIAddress(bus: 0, device: 2, function: 0), index: 0, size: 256 << 20, window: .memory32)) {
            try PCIResourceAssigner.assign(PCIEnumerator.enumerate(crowded), resources: noHigh, access: crowded)
        }
        // Nothing was written: every BAR still reads unassigned.
        for device: UInt8 in 0..<3 {
            #expect(try PCIBAR.read(PCIAddress(bus: 0, device: device, function: 0), index: 0, access: crowded)?.address == 0)
            #expect(crowded.read16(PCIAddress(bus: 0, device: device, function: 0), offset: PCIHeader.command) == 0)
        }
        // With the 64-bit window the third goes above 4 GiB.
        let placed = try PCIResourceAssigner.assign(PCIEnumerator.enumerate(crowded), resources: microvm, access: crowded)
        #expect(placed.map(\.window) == [.memory32, .memory32, .memory64])
    }

    @Test func microvmWindowsFollowQEMU() {
        let windows = PCIHostBridgeResources.qemuMicrovm(physicalAddressBits: 40)
        #expect(windows.memory32 == PCIWindow(base: 0xC000_0000, size: 0x2000_0000))
        #expect(windows.memory64 == PCIWindow(base: 0xC0_0000_0000, size: 0x40_0000_0000))
        #expect(windows.io == nil)
        #expect(windows.ecam?.baseAddress == 0xE000_0000)
        #expect(windows.ecam?.endBus == 255)
    }
}

/// Bridges without firmware: bus numbers, then one memory window per bridge
/// that holds everything below it.
struct PCIBridgeAssignmentTests {
    /// A type 1 function with the bus-number and window registers writable.
    func bridge() -> PCIFunctionModel {
        let model = PCIFunctionModel(vendor: 0x1B36, device: 0x000C, classCode: 0x06_04_00, headerType: 1)
        for offset in [0x18, 0x19, 0x1A, 0x1C, 0x1D] { model.writable[offset] = 0xFF }
        for offset in [0x20, 0x22, 0x24, 0x26] {
            model.writable[offset] = 0xF0
            model.writable[offset + 1] = 0xFF
        }
        for offset in 0x28..<0x34 { model.writable[offset] = 0xFF }
        return model
    }

    func read16(_ space: PCIConfigurationModel, _ address: PCIAddress, _ offset: Int) -> UInt64 {
        UInt64(space.read16(address, offset: offset))
    }

    /// Bus 0: host bridge, an endpoint, root port A (bus 1: a disk and a
    /// nested bridge to bus 2 with a NIC), root port B (bus 3: empty).
    @Test func bridgesAreNumberedAndGetWindowsCoveringTheirDevices() throws {
        let space = PCIConfigurationModel()
        space.add(0, 0, 0, PCIFunctionModel(vendor: 0x1B36, device: 0x0008, classCode: 0x06_00_00))
        let top = PCIFunctionModel(vendor: 0x1AF4, device: 0x1005, classCode: 0xFF_00_00)
        top.setBAR(4, .memory64, size: 16384, address: 0, prefetchable: true)
        space.add(0, 1, 0, top)
        space.add(0, 2, 0, bridge())
        space.add(0, 3, 0, bridge())
        let disk = PCIFunctionModel(vendor: 0x1AF4, device: 0x1042, classCode: 0x01_00_00)
        disk.setBAR(1, .memory32, size: 4096, address: 0)
        disk.setBAR(4, .memory64, size: 4 << 20, address: 0, prefetchable: true)
        disk.setBAR(0, .io32, size: 64, address: 0)
        space.add(1, 0, 0, disk)
        space.add(1, 1, 0, bridge())
        let nic = PCIFunctionModel(vendor: 0x1AF4, device: 0x1041, classCode: 0x02_00_00)
        nic.setBAR(4, .memory64, size: 16384, address: 0, prefetchable: true)
        space.add(2, 0, 0, nic)

        // Before numbering the bridges are not followed.
        #expect(PCIEnumerator.enumerate(space).count == 4)
        #expect(PCIBusNumbering.assign(space) == 3)
        let rootA = PCIAddress(bus: 0, device: 2, function: 0)
        let nested = PCIAddress(bus: 1, device: 1, function: 0)
        let rootB = PCIAddress(bus: 0, device: 3, function: 0)
        #expect([space.read8(rootA, offset: 0x18), space.read8(rootA, offset: 0x19), space.read8(rootA, offset: 0x1A)] == [0, 1, 2])
        #expect([space.read8(nested, offset: 0x18), space.read8(nested, offset: 0x19), space.read8(nested, offset: 0x1A)] == [1, 2, 2])
        #expect([space.read8(rootB, offset: 0x18), space.read8(rootB, offset: 0x19), space.read8(rootB, offset: 0x1A)] == [0, 3, 3])
        let functions = PCIEnumerator.enumerate(space)
        #expect(functions.count == 7)

        let resources = PCIHostBridgeResources.qemuMicrovm(physicalAddressBits: 40)
        let assignments = try PCIResourceAssigner.assign(functions, resources: resources, access: space)
        func window(_ bridge: PCIAddress) -> (UInt64, UInt64) {
            (read16(space, bridge, 0x20) << 16, (read16(space, bridge, 0x22) << 16) | 0xF_FFFF)
        }
        let (aBase, aLimit) = window(rootA)
        let (nBase, nLimit) = window(nested)
        #expect(aBase >= 0xC000_0000 && aLimit < 0xE000_0000 && aBase < aLimit)
        #expect(nBase >= aBase && nLimit <= aLimit && nBase < nLimit)
        for assignment in assignments where !assignment.bar.isIO {
            let range = (assignment.bar.address, assignment.bar.address + assignment.bar.size - 1)
            switch assignment.function.bus {
            case 2: #expect(range.0 >= nBase && range.1 <= nLimit)
            case 1: #expect(range.0 >= aBase && range.1 <= aLimit && (range.1 < nBase || range.0 > nLimit))
            default: #expect(range.1 < aBase || range.0 > aLimit)
            }
            #expect(assignment.bar.address % assignment.bar.size == 0)
        }
        // The 4 MiB BAR fixes the window's alignment.
        #expect(aBase % (4 << 20) == 0)
        // Below a bridge I/O stays unassigned; the disk's memory BARs are placed.
        #expect(assignments.filter { $0.function.bus == 1 }.count == 2)
        // The empty root port's memory window is closed (base above limit);
        // prefetchable and I/O windows are closed everywhere.
        #expect(read16(space, rootB, 0x20) > read16(space, rootB, 0x22))
        for bridge in [rootA, nested, rootB] {
            #expect(read16(space, bridge, 0x24) > read16(space, bridge, 0x26))
            #expect(space.read8(bridge, offset: 0x1C) > space.read8(bridge, offset: 0x1D))
        }
        for bridge in [rootA, nested] {
            let command = space.read16(bridge, offset: PCIHeader.command)
            #expect(command & PCIHeader.commandMemorySpace != 0 && command & PCIHeader.commandBusMaster != 0)
        }
        #expect(space.read16(rootB, offset: PCIHeader.command) & PCIHeader.commandBusMaster == 0)
    }

    @Test func aBridgeWindowThatDoesNotFitIsAnError() throws {
        let space = PCIConfigurationModel()
        space.add(0, 2, 0, bridge())
        let big = PCIFunctionModel(vendor: 0x1234, device: 0x5555, classCode: 0x03_00_00)
        big.setBAR(0, .memory64, size: 1 << 30, address: 0, prefetchable: true)
        space.add(1, 0, 0, big)
        PCIBusNumbering.assign(space)
        #expect(throws: PCIAssignmentError.windowExhausted(function: PCIAddress(bus: 0, device: 2, function: 0), index: -1, size: 1 << 30, window: .memory32)) {
            try PCIResourceAssigner.assign(PCIEnumerator.enumerate(space), resources: .qemuMicrovm(physicalAddressBits: 40), access: space)
        }
        #expect(space.read16(PCIAddress(bus: 0, device: 2, function: 0), offset: 0x20) == 0)
    }
}
