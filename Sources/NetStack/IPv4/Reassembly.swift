// IPv4 fragment reassembly with bounded memory and a timeout (RFC 791 §3.2, RFC 815; overlaps rejected as RFC 5722 does for IPv6).

/// Limits of the reassembly buffer.
public struct ReassemblyConfiguration: Sendable {
    /// Datagrams under reassembly at once.
    public var maximumDatagrams = 16
    /// Fragment payload bytes held across all datagrams.
    public var maximumBytes = 256 * 1024
    /// Fragments held per datagram.
    public var maximumFragmentsPerDatagram = 64
    /// Time a datagram may take to complete (RFC 791 suggests 15 s as a lower bound on the TTL timer).
    public var timeout: UInt64 = 30_000_000_000
    public init() {}
}

/// Why a fragment was not accepted.
public enum ReassemblyDrop: Error, Equatable, Sendable {
    case overlap
    case tooLarge
    case limits
    case inconsistent
}

/// Collects fragments until whole datagrams appear.
public struct IPv4Reassembler {
    struct Key: Hashable {
        var source: IPv4Address
        var destination: IPv4Address
        var protocolNumber: UInt8
        var identification: UInt16
    }

    struct Fragment {
        var offset: Int
        var bytes: [UInt8]
        var end: Int { offset + bytes.count }
    }

    struct Datagram {
        var fragments: [Fragment] = []
        /// Payload length, known once the last fragment (MF clear) arrives.
        var totalLength: Int?
        var bytes = 0
        var deadline: UInt64
        /// The first fragment's header, which becomes the reassembled header.
        var firstHeader: IPv4Header?
    }

    /// The limits this buffer enforces.
    public let configuration: ReassemblyConfiguration
    var datagrams: [Key: Datagram] = [:]
    /// Payload bytes held now.
    public private(set) var heldBytes = 0
    /// Datagrams discarded for overlaps, inconsistencies, limits or timeout.
    public private(set) var droppedDatagrams = 0

    /// An empty buffer with the given limits.
    public init(configuration: ReassemblyConfiguration = ReassemblyConfiguration()) {
        self.configuration = configuration
    }

    /// Datagrams with some but not all fragments.
    public var datagramsInProgress: Int { datagrams.count }

    /// Adds a fragment. Returns the whole datagram (header with fragment fields
    /// cleared, payload) once complete; throws when the datagram is discarded.
    public mutating func add(header: IPv4Header, payload: ArraySlice<UInt8>, now: UInt64) throws(ReassemblyDrop) -> (header: IPv4Header, payload: [UInt8])? {
        let key = Key(source: header.source, destination: header.destination, protocolNumber: header.protocol.rawValue, identification: header.identification)
        let offset = Int(header.fragmentOffset) * 8
        let end = offset + payload.count
        // Non-final fragments carry multiples of 8 bytes; a datagram is at most 65535 bytes.
        guard end + header.headerLength <= 65535, !(header.moreFragments && payload.count % 8 != 0), !payload.isEmpty || !header.moreFragments else {
            discard(key)
            throw .tooLarge
        }
        var datagram: Datagram
        if let existing = datagrams[key] {
            datagram = existing
        } else {
            guard datagrams.count < configuration.maximumDatagrams else { throw .limits }
            datagram = Datagram(deadline: now &+ configuration.timeout)
        }
        guard heldBytes + payload.count <= configuration.maximumBytes, datagram.fragments.count < configuration.maximumFragmentsPerDatagram else {
            discard(key)
            throw .limits
        }
        if !header.moreFragments {
            if let total = datagram.totalLength, total != end {
                discard(key)
                throw .inconsistent
            }
            datagram.totalLength = end
        }
        if let total = datagram.totalLength, end > total {
            discard(key)
            throw .inconsistent
        }
        // Overlapping fragments are a known evasion and DoS vector; an exact
        // duplicate is harmless and ignored, any other overlap kills the datagram.
        var insertAt = datagram.fragments.count
        for (index, fragment) in datagram.fragments.enumerated() {
            if fragment.offset == offset && fragment.end == end {
                datagrams[key] = datagram
                return nil
            }
            if offset < fragment.end && fragment.offset < end {
                discard(key)
                throw .overlap
            }
            if fragment.offset > offset && insertAt == datagram.fragments.count { insertAt = index }
        }
        datagram.fragments.insert(Fragment(offset: offset, bytes: Array(payload)), at: insertAt)
        datagram.bytes += payload.count
        heldBytes += payload.count
        if offset == 0 { datagram.firstHeader = header }
        datagrams[key] = datagram

        guard let total = datagram.totalLength, let first = datagram.firstHeader, datagram.bytes == total else { return nil }
        // Fragments are sorted and disjoint, so equal byte count means no holes.
        var whole: [UInt8] = []
        whole.reserveCapacity(total)
        for fragment in datagram.fragments { whole.append(contentsOf: fragment.bytes) }
        heldBytes -= datagram.bytes
        datagrams.removeValue(forKey: key)
        var result = first
        result.moreFragments = false
        result.fragmentOffset = 0
        result.totalLength = UInt16(truncatingIfNeeded: first.headerLength + total)
        return (result, whole)
    }

    /// Drops datagrams whose time is up.
    public mutating func expire(now: UInt64) {
        var expired: [Key] = []
        for (key, datagram) in datagrams where datagram.deadline <= now { expired.append(key) }
        for key in expired { discard(key) }
    }

    /// The earliest time `expire` has work to do.
    public var nextDeadline: UInt64? {
        var earliest: UInt64? = nil
        for datagram in datagrams.values { earliest = min(earliest ?? datagram.deadline, datagram.deadline) }
        return earliest
    }

    private mutating func discard(_ key: Key) {
        if let datagram = datagrams.removeValue(forKey: key) {
            heldBytes -= datagram.bytes
            droppedDatagrams += 1
        }
    }
}
