// The ARP cache: resolved entries with expiry, bounded pending-packet queues, request retries (RFC 826; RFC 1122 §2.3.2.1-2).

/// Limits and timers of an ARP cache.
public struct ARPConfiguration: Sendable {
    /// How long a resolved entry stays usable.
    public var entryLifetime: UInt64 = 60_000_000_000
    /// Interval between requests for an unresolved address.
    public var retryInterval: UInt64 = 1_000_000_000
    /// Requests sent before giving up and dropping the queued packets.
    public var maximumRequests = 3
    /// Resolved plus unresolved entries; the oldest is evicted beyond this.
    public var maximumEntries = 256
    /// Packets held per unresolved address (RFC 1122 asks for at least one).
    public var maximumPendingPerAddress = 8
    /// Packets held across all unresolved addresses.
    public var maximumPendingTotal = 64
    public init() {}
}

/// The mapping from IPv4 to Ethernet addresses of one interface.
public struct ARPCache {
    struct Entry {
        var hardwareAddress: MACAddress?
        /// Expiry for resolved entries; time of the next request for unresolved ones.
        var deadline: UInt64
        var requestsSent = 0
        var pending: [[UInt8]] = []
        var created: UInt64
    }

    /// The limits this cache enforces.
    public let configuration: ARPConfiguration
    var entries: [IPv4Address: Entry] = [:]
    private(set) var pendingTotal = 0
    /// Packets dropped because a queue was full or resolution failed.
    public private(set) var droppedPackets = 0

    /// An empty cache with the given limits.
    public init(configuration: ARPConfiguration = ARPConfiguration()) {
        self.configuration = configuration
    }

    /// Resolved and unresolved entries held.
    public var count: Int { entries.count }

    /// The resolved address of `address`, if known and not expired.
    public func lookup(_ address: IPv4Address, now: UInt64) -> MACAddress? {
        guard let entry = entries[address], let hardware = entry.hardwareAddress, entry.deadline > now else { return nil }
        return hardware
    }

    /// Records a mapping. `create` is false for ARP packets not addressed to
    /// us: RFC 826 only refreshes existing entries then. Returns the packets
    /// that waited for this address.
    public mutating func update(_ address: IPv4Address, hardwareAddress: MACAddress, now: UInt64, create: Bool) -> [[UInt8]] {
        if var entry = entries[address] {
            let waiting = entry.pending
            pendingTotal -= waiting.count
            entry.pending = []
            entry.hardwareAddress = hardwareAddress
            entry.deadline = now &+ configuration.entryLifetime
            entry.requestsSent = 0
            entries[address] = entry
            return waiting
        }
        guard create else { return [] }
        makeRoom()
        entries[address] = Entry(hardwareAddress: hardwareAddress, deadline: now &+ configuration.entryLifetime, created: now)
        return []
    }

    /// What the caller must do after queueing a packet for an unresolved address.
    public enum QueueResult: Equatable, Sendable {
        /// Send an ARP request now.
        case sendRequest
        /// A request is outstanding; the packet waits.
        case queued
        /// A queue limit was hit; the packet was dropped.
        case dropped
    }

    /// Holds `packet` until `address` resolves.
    public mutating func enqueue(_ packet: [UInt8], for address: IPv4Address, now: UInt64) -> QueueResult {
        var entry: Entry
        var isNew = false
        if let existing = entries[address], existing.hardwareAddress == nil {
            entry = existing
        } else {
            // Unknown, or resolved but expired: resolve afresh.
            if entries[address] == nil { makeRoom() }
            entry = Entry(hardwareAddress: nil, deadline: now &+ configuration.retryInterval, requestsSent: 1, created: now)
            if let old = entries[address] {
                pendingTotal -= old.pending.count
            }
            isNew = true
        }
        if entry.pending.count >= configuration.maximumPendingPerAddress || pendingTotal >= configuration.maximumPendingTotal {
            droppedPackets += 1
            entries[address] = entry
            return isNew ? .sendRequest : .dropped
        }
        entry.pending.append(packet)
        pendingTotal += 1
        entries[address] = entry
        return isNew ? .sendRequest : .queued
    }

    /// Expires entries and returns the addresses to send another request for.
    public mutating func expire(now: UInt64) -> [IPv4Address] {
        var retry: [IPv4Address] = []
        var remove: [IPv4Address] = []
        for (address, entry) in entries where entry.deadline <= now {
            if entry.hardwareAddress != nil {
                remove.append(address)
            } else if entry.requestsSent >= configuration.maximumRequests {
                droppedPackets += entry.pending.count
                remove.append(address)
            } else {
                retry.append(address)
            }
        }
        for address in remove {
            if let entry = entries.removeValue(forKey: address) { pendingTotal -= entry.pending.count }
        }
        for address in retry {
            entries[address]!.requestsSent += 1
            entries[address]!.deadline = now &+ configuration.retryInterval
        }
        return retry
    }

    /// The earliest time `expire` has work to do.
    public var nextDeadline: UInt64? {
        var earliest: UInt64? = nil
        for entry in entries.values where entry.hardwareAddress == nil {
            earliest = min(earliest ?? entry.deadline, entry.deadline)
        }
        return earliest
    }

    private mutating func makeRoom() {
        guard entries.count >= configuration.maximumEntries else { return }
        var oldest: (IPv4Address, UInt64)? = nil
        // Ties go to the lower address so eviction does not depend on dictionary order.
        for (address, entry) in entries {
            if let (oldAddress, oldCreated) = oldest, entry.created > oldCreated || (entry.created == oldCreated && address > oldAddress) { continue }
            oldest = (address, entry.created)
        }
        if let (address, _) = oldest, let entry = entries.removeValue(forKey: address) {
            pendingTotal -= entry.pending.count
            droppedPackets += entry.pending.count
        }
    }
}
