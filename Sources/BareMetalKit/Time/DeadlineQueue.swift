// DeadlineQueue: pending timeouts keyed by nanosecond deadlines, an indexed
// binary min-heap with stable handles, so sleeping threads and timed waits
// can be cancelled or moved in O(log n) and the LAPIC timer is programmed
// for the earliest one only (no periodic tick).

/// Identifies a scheduled entry; stale after the entry fired or was cancelled.
public struct TimerHandle: Hashable, Sendable {
    let slot: UInt32
    let generation: UInt32
}

/// A priority queue of payloads by deadline; equal deadlines fire in the
/// order they were scheduled.
public struct DeadlineQueue<Payload> {
    struct Entry {
        var deadline: UInt64
        var sequence: UInt64
        var slot: UInt32
    }

    struct Slot {
        var heapIndex: Int
        var generation: UInt32
        var payload: Payload?
    }

    var heap: [Entry] = []
    var slots: [Slot] = []
    var freeSlots: [UInt32] = []
    var nextSequence: UInt64 = 0

    public init() {}

    public var count: Int { heap.count }
    public var isEmpty: Bool { heap.isEmpty }

    /// The earliest deadline, or nil when nothing is scheduled.
    public var nextDeadline: UInt64? { heap.first?.deadline }

    /// Schedules `payload` for `deadline` (nanoseconds).
    @discardableResult
    public mutating func schedule(_ payload: Payload, at deadline: UInt64) -> TimerHandle {
        let slot: UInt32
        if let reused = freeSlots.popLast() {
            slot = reused
            slots[Int(slot)].payload = payload
        } else {
            slot = UInt32(slots.count)
            slots.append(Slot(heapIndex: 0, generation: 0, payload: payload))
        }
        heap.append(Entry(deadline: deadline, sequence: nextSequence, slot: slot))
        nextSequence += 1
        slots[Int(slot)].heapIndex = heap.count - 1
        siftUp(heap.count - 1)
        return TimerHandle(slot: slot, generation: slots[Int(slot)].generation)
    }

    /// Whether `handle` still names a scheduled entry.
    public func contains(_ handle: TimerHandle) -> Bool { heapIndex(handle) != nil }

    /// The deadline of a scheduled entry.
    public func deadline(of handle: TimerHandle) -> UInt64? { heapIndex(handle).map { heap[$0].deadline } }

    /// Removes a scheduled entry and returns its payload; nil when it
    /// already fired or was cancelled.
    @discardableResult
    public mutating func cancel(_ handle: TimerHandle) -> Payload? {
        guard let index = heapIndex(handle) else { return nil }
        return remove(at: index)
    }

    /// Moves a scheduled entry to a new deadline; false when it is gone.
    @discardableResult
    public mutating func reschedule(_ handle: TimerHandle, to deadline: UInt64) -> Bool {
        guard let index = heapIndex(handle) else { return false }
        heap[index].deadline = deadline
        heap[index].sequence = nextSequence
        nextSequence += 1
        siftDown(siftUp(index))
        return true
    }

    /// Removes and returns the earliest entry whose deadline is at or
    /// before `now`, or nil when none is due.
    public mutating func popExpired(now: UInt64) -> (handle: TimerHandle, deadline: UInt64, payload: Payload)? {
        guard let first = heap.first, first.deadline <= now else { return nil }
        let handle = TimerHandle(slot: first.slot, generation: slots[Int(first.slot)].generation)
        let payload = remove(at: 0)
        return (handle, first.deadline, payload)
    }

    func heapIndex(_ handle: TimerHandle) -> Int? {
        guard Int(handle.slot) < slots.count else { return nil }
        let slot = slots[Int(handle.slot)]
        guard slot.generation == handle.generation, slot.payload != nil else { return nil }
        return slot.heapIndex
    }

    mutating func remove(at index: Int) -> Payload {
        let slot = Int(heap[index].slot)
        let payload = slots[slot].payload!
        slots[slot].payload = nil
        slots[slot].generation &+= 1
        freeSlots.append(UInt32(slot))
        let last = heap.count - 1
        if index != last {
            heap.swapAt(index, last)
            slots[Int(heap[index].slot)].heapIndex = index
        }
        heap.removeLast()
        if index < heap.count { siftDown(siftUp(index)) }
        return payload
    }

    func precedes(_ a: Entry, _ b: Entry) -> Bool {
        a.deadline < b.deadline || (a.deadline == b.deadline && a.sequence < b.sequence)
    }

    @discardableResult
    mutating func siftUp(_ start: Int) -> Int {
        var index = start
        while index > 0 {
            let parent = (index - 1) / 2
            guard precedes(heap[index], heap[parent]) else { break }
            swapEntries(index, parent)
            index = parent
        }
        return index
    }

    mutating func siftDown(_ start: Int) {
        var index = start
        while true {
            let left = 2 * index + 1
            let right = left + 1
            var smallest = index
            if left < heap.count && precedes(heap[left], heap[smallest]) { smallest = left }
            if right < heap.count && precedes(heap[right], heap[smallest]) { smallest = right }
            guard smallest != index else { return }
            swapEntries(index, smallest)
            index = smallest
        }
    }

    mutating func swapEntries(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        slots[Int(heap[a].slot)].heapIndex = a
        slots[Int(heap[b].slot)].heapIndex = b
    }
}
