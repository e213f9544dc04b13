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
