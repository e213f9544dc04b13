// ConsoleRing: the PV console of Xen public/io/console.h (xencons_interface:
// a 2 KiB output ring and a 1 KiB input ring in one shared page).
import CXen

/// Why console output failed.
public enum ConsoleError: Error, Equatable, Sendable {
    /// The console daemon published indices that cannot be.
    case ringIndexCorrupt(consumer: UInt32, producer: UInt32)
    /// The output ring stayed full for `waits` waits; `written` bytes went out.
    case stalled(written: Int, waits: Int)
    case hypercall(HypercallError)
}

/// The console page Xen provides (`start_info.console.domU`, or the HVM
/// parameters `HVM_PARAM_CONSOLE_PFN`/`HVM_PARAM_CONSOLE_EVTCHN`).
public struct ConsoleRing<H: Hypercalls> {
    public var hypervisor: H
    let interface: UnsafeMutableRawPointer
    let port: EventChannelPort
    /// Waits for the console daemon allowed per write.
    public var maximumWaits: Int

    static var inOffset: Int { CXEN_OFFSETOF_xencons_interface_in }
    static var outOffset: Int { CXEN_OFFSETOF_xencons_interface_out }
    static var inConsumerOffset: Int { CXEN_OFFSETOF_xencons_interface_in_cons }
    static var inProducerOffset: Int { CXEN_OFFSETOF_xencons_interface_in_prod }
    static var outConsumerOffset: Int { CXEN_OFFSETOF_xencons_interface_out_cons }
    static var outProducerOffset: Int { CXEN_OFFSETOF_xencons_interface_out_prod }
    /// `sizeof(intf->out)` and `sizeof(intf->in)`, the masks of `MASK_XENCONS_IDX`.
    static var outSize: UInt32 { UInt32(MemoryLayout.size(ofValue: xencons_interface().out)) }
    static var inSize: UInt32 { UInt32(MemoryLayout.size(ofValue: xencons_interface().in)) }

    public init(interface: UnsafeMutableRawPointer, port: EventChannelPort, hypervisor: H, maximumWaits: Int = Int.max) {
        self.interface = interface
        self.port = port
        self.hypervisor = hypervisor
        self.maximumWaits = maximumWaits
    }

    /// Writes all of `bytes`, waiting for the daemon when the ring is full.
    public mutating func write(_ bytes: UnsafeRawBufferPointer) throws(ConsoleError) {
        var written = 0
        var waits = 0
        while written < bytes.count {
            let consumer = cxen_load32(interface + Self.outConsumerOffset)
            var producer = cxen_load32(interface + Self.outProducerOffset)
            cxen_mb()
            let used = producer &- consumer
            guard used <= Self.outSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
            if used == Self.outSize {
                try kick()
                if waits == maximumWaits { throw .stalled(written: written, waits: waits) }
                hypervisor.block()
                waits += 1
                continue
            }
            var room = Self.outSize - used
            while room > 0 && written < bytes.count {
                (interface + Self.outOffset + Int(producer & (Self.outSize - 1))).storeBytes(of: bytes[written], as: UInt8.self)
                producer &+= 1
                written += 1
                room -= 1
            }
            // Data before the index that publishes it.
            cxen_wmb()
            cxen_store32(interface + Self.outProducerOffset, producer)
        }
        try kick()
    }

    /// Copies up to `buffer.count` received bytes into `buffer`; returns how many.
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(ConsoleError) -> Int {
        var consumer = cxen_load32(interface + Self.inConsumerOffset)
        let producer = cxen_load32(interface + Self.inProducerOffset)
        cxen_rmb()
        guard producer &- consumer <= Self.inSize else { throw .ringIndexCorrupt(consumer: consumer, producer: producer) }
        var count = 0
        while consumer != producer && count < buffer.count {
            buffer[count] = (interface + Self.inOffset + Int(consumer & (Self.inSize - 1))).load(as: UInt8.self)
            consumer &+= 1
            count += 1
        }
        cxen_mb()
        cxen_store32(interface + Self.inConsumerOffset, consumer)
        if count > 0 { try kick() }
        return count
    }

    mutating func kick() throws(ConsoleError) {
        do { try hypervisor.notify(port) } catch { throw .hypercall(error) }
    }
}
