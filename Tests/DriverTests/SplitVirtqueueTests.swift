// SplitVirtqueue on its own: 16-bit index wrap-around, the free list, and
// vring_need_event (virtio 1.2 §2.7.10) around the wrap.
import Testing

@testable import BareMetalKit

@Test func indicesWrapPastSixtyFiveThousandWithoutLosingDescriptors() throws {
    let arena = DMAArena(capacity: 1 << 20)
    let queue = try SplitVirtqueue(index: 0, size: 4, dma: TestDMA(arena: arena), eventIndex: true, indirectCapacity: 0)
    let buffer = arena.buffer(count: 64)
    let address = arena.physical(buffer.baseAddress!)
    let available = arena.pointer(physical: queue.driverAreaAddress, length: 6 + 8)!
    let used = arena.pointer(physical: queue.deviceAreaAddress, length: 6 + 32)!
    var deviceAvailable: UInt16 = 0
    var deviceUsed: UInt16 = 0
    var notifications = 0
    for round in 0..<70_000 {
        let segments = round % 3 == 0 ? 1 : 2
        let head = try queue.add(
            (0..<segments).map { VirtqueueSegment(address: address + UInt64($0 * 32), length: 32, isDeviceWritable: true) })
        // The device: avail_event = its next index, so every add notifies.
        if queue.needsNotification() { notifications += 1 }
        let availableIndex = available.load(fromByteOffset: 2, as: UInt16.self)
        #expect(availableIndex == deviceAvailable &+ 1)
        let offered = available.load(fromByteOffset: 4 + 2 * Int(deviceAvailable % 4), as: UInt16.self)
        #expect(offered == head)
        deviceAvailable &+= 1
        used.storeBytes(of: deviceAvailable, toByteOffset: 4 + 8 * 4, as: UInt16.self)
        used.storeBytes(of: UInt32(head), toByteOffset: 4 + 8 * Int(deviceUsed % 4), as: UInt32.self)
        used.storeBytes(of: UInt32(segments * 32), toByteOffset: 8 + 8 * Int(deviceUsed % 4), as: UInt32.self)
        deviceUsed &+= 1
        used.storeBytes(of: deviceUsed, toByteOffset: 2, as: UInt16.self)
        let element = try #require(try queue.next())
        #expect(element == VirtqueueUsedElement(id: head, length: UInt32(segments * 32)))
        #expect(try queue.next() == nil)
        // used_event follows the driver's position.
        #expect(available.load(fromByteOffset: 4 + 2 * 4, as: UInt16.self) == deviceUsed)
    }
    #expect(queue.freeCount == 4 && queue.outstanding == 0)
    #expect(notifications == 70_000)
}

@Test func eventIndexSuppressesNotificationsTheDeviceDidNotAskFor() throws {
    let arena = DMAArena(capacity: 1 << 20)
    let queue = try SplitVirtqueue(index: 0, size: 8, dma: TestDMA(arena: arena), eventIndex: true, indirectCapacity: 0)
    let buffer = arena.buffer(count: 16)
    let segment = [VirtqueueSegment(address: arena.physical(buffer.baseAddress!), length: 16, isDeviceWritable: false)]
    let used = arena.pointer(physical: queue.deviceAreaAddress, length: 6 + 64)!
    // The device asks to be woken when index 3 is published (avail_event = 2).
    used.storeBytes(of: UInt16(2), toByteOffset: 4 + 8 * 8, as: UInt16.self)
    _ = try queue.add(segment)
    _ = try queue.add(segment)
    #expect(!queue.needsNotification())  // published 0 and 1: not yet
    _ = try queue.add(segment)
    #expect(queue.needsNotification())  // published index 2
    _ = try queue.add(segment)
    #expect(!queue.needsNotification())
    #expect(!queue.needsNotification())  // nothing new
}

@Test func chainsThatCannotFitAreRefused() throws {
    let arena = DMAArena(capacity: 1 << 20)
    let queue = try SplitVirtqueue(index: 2, size: 4, dma: TestDMA(arena: arena), eventIndex: false, indirectCapacity: 0)
    let segment = VirtqueueSegment(address: arena.physical(arena.buffer(count: 8).baseAddress!), length: 8, isDeviceWritable: false)
    #expect(throws: VirtioError.chainTooLong(queue: 2, segments: 5)) { try queue.add([VirtqueueSegment](repeating: segment, count: 5)) }
    _ = try queue.add([segment, segment, segment])
    #expect(throws: VirtioError.queueFull(queue: 2)) { try queue.add([segment, segment]) }
    #expect(throws: VirtioError.queueUnavailable(queue: 0, size: 6)) {
        try SplitVirtqueue(index: 0, size: 6, dma: TestDMA(arena: arena), eventIndex: false, indirectCapacity: 0)
    }
}
