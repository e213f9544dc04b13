// E1000: the Intel 82540EM Gigabit Ethernet controller (QEMU `-device
// e1000`), after the PCI/PCI-X Family of Gigabit Ethernet Controllers
// Software Developer's Manual (8254x SDM): reset (§14.5), MAC address from
// RAL/RAH or the EEPROM (§5.6, §13.4.4), legacy receive and transmit
// descriptor rings (§3.2, §3.3), interrupt causes (§13.4.17).
import DeviceInterfaces

/// Why the e1000 driver failed.
public enum E1000Error: Error, Equatable, Sendable {
    /// CTRL.RST did not clear.
    case resetTimedOut
    /// EERD.DONE did not set for this EEPROM word.
    case eepromTimedOut(word: UInt8)
    case outOfDMAMemory(byteCount: Int)
    /// BAR 0 is not an assigned memory BAR.
    case pci(PCIError)
    /// The ring size is not a multiple of 8 in 8...4096 (RDLEN/TDLEN are
    /// multiples of 128 bytes).
    case invalidRingSize(Int)
}

/// Interrupt causes read from ICR (8254x SDM §13.4.17).
public struct E1000InterruptCauses: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Bit 0 TXDW: transmit descriptor written back.
    public static var transmitDescriptorWritten: Self { Self(rawValue: 1 << 0) }
    /// Bit 1 TXQE: transmit queue empty.
    public static var transmitQueueEmpty: Self { Self(rawValue: 1 << 1) }
    /// Bit 2 LSC: link status change.
    public static var linkStatusChange: Self { Self(rawValue: 1 << 2) }
    /// Bit 4 RXDMT0: receive descriptor minimum threshold.
    public static var receiveDescriptorsLow: Self { Self(rawValue: 1 << 4) }
    /// Bit 6 RXO: receiver overrun.
    public static var receiveOverrun: Self { Self(rawValue: 1 << 6) }
    /// Bit 7 RXT0: receiver timer (a frame arrived).
    public static var receiveTimer: Self { Self(rawValue: 1 << 7) }
}

/// An 82540EM as a `NetworkInterface`, polled or interrupt-driven.
public struct E1000<Registers: RegisterBlock, DMA: DMAMemory>: NetworkInterface {
    /// 0x0000 CTRL Device Control
    static var ctrl: Int { 0x0000 }
    /// 0x0008 STATUS Device Status
    static var status: Int { 0x0008 }
    /// 0x0014 EERD EEPROM Read
    static var eerd: Int { 0x0014 }
    /// 0x00C0 ICR Interrupt Cause Read (clears on read)
    static var icr: Int { 0x00C0 }
    /// 0x00D0 IMS Interrupt Mask Set
    static var ims: Int { 0x00D0 }
    /// 0x00D8 IMC Interrupt Mask Clear
    static var imc: Int { 0x00D8 }
    /// 0x0100 RCTL Receive Control
    static var rctl: Int { 0x0100 }
    /// 0x0400 TCTL Transmit Control
    static var tctl: Int { 0x0400 }
    /// 0x0410 TIPG Transmit Inter-Packet Gap
    static var tipg: Int { 0x0410 }
    /// 0x2800 RDBAL, 0x2804 RDBAH, 0x2808 RDLEN, 0x2810 RDH, 0x2818 RDT
    static var rdbal: Int { 0x2800 }
    static var rdbah: Int { 0x2804 }
    static var rdlen: Int { 0x2808 }
    static var rdh: Int { 0x2810 }
    static var rdt: Int { 0x2818 }
    /// 0x3800 TDBAL, 0x3804 TDBAH, 0x3808 TDLEN, 0x3810 TDH, 0x3818 TDT
    static var tdbal: Int { 0x3800 }
    static var tdbah: Int { 0x3804 }
    static var tdlen: Int { 0x3808 }
    static var tdh: Int { 0x3810 }
    static var tdt: Int { 0x3818 }
    /// 0x5200 MTA Multicast Table Array (128 entries)
    static var mta: Int { 0x5200 }
    /// 0x5400 RAL0, 0x5404 RAH0 (bit 31 AV: address valid)
    static var ral0: Int { 0x5400 }
    static var rah0: Int { 0x5404 }

    // CTRL bits
    static var ctrlSetLinkUp: UInt32 { 1 << 6 }
    static var ctrlAutoSpeed: UInt32 { 1 << 5 }
    static var ctrlLinkReset: UInt32 { 1 << 3 }
    static var ctrlReset: UInt32 { 1 << 26 }
    static var ctrlPHYReset: UInt32 { 1 << 31 }
    // STATUS bits
    static var statusLinkUp: UInt32 { 1 << 1 }
    // RCTL bits: EN, BAM, BSIZE 00 (2048 bytes), SECRC
    static var rctlEnable: UInt32 { 1 << 1 }
    static var rctlBroadcastAccept: UInt32 { 1 << 15 }
    static var rctlStripCRC: UInt32 { 1 << 26 }
    // TCTL bits: EN, PSP, CT (bits 11:4), COLD (bits 21:12)
    static var tctlEnable: UInt32 { 1 << 1 }
    static var tctlPadShortPackets: UInt32 { 1 << 3 }
    // Descriptor bits (§3.2.3, §3.3.3)
    static var descriptorDone: UInt8 { 1 << 0 }
    static var endOfPacket: UInt8 { 1 << 1 }
    /// Receive errors: CE, SE, SEQ, CXE, RXE (bits 0, 1, 2, 4, 7).
    static var receiveErrorMask: UInt8 { 0x97 }
    /// Transmit command: EOP, IFCS, RS.
    static var transmitCommand: UInt8 { 1 << 0 | 1 << 1 | 1 << 3 }

    static var bufferSize: Int { 2048 }
    static var maximumFrame: Int { 1514 }

    public let registers: Registers
    let dma: DMA
    public let ringSize: Int
    let receiveRing: UnsafeMutableRawPointer
    let transmitRing: UnsafeMutableRawPointer
    let receiveBuffers: UnsafeMutableRawPointer
    let transmitBuffers: UnsafeMutableRawPointer
    /// Next receive descriptor to inspect.
    var receiveNext = 0
    /// Next transmit descriptor to fill, and oldest not yet reclaimed.
    var transmitTail = 0
    var transmitClean = 0
    /// Dropping the rest of a frame that did not fit one buffer.
    var discarding = false

    public let macAddress: MACAddress
    public let mtu = 1500
    public private(set) var statistics = NetworkInterfaceStatistics()
    /// Link-status changes seen in ICR.
    public private(set) var linkChanges = 0
    /// STATUS.LU as last read: on the first send and every
    /// `linkCheckInterval`-th after it, and whenever ICR reports a link
    /// change. `send` checks this instead of reading STATUS for every
    /// frame (each read is an exit to the hypervisor).
    var linkUpAtLastCheck = true
    var sendsUntilLinkCheck = 0
    static var linkCheckInterval: Int { 64 }
    /// Inside a transmit batch, and whether TDT lags behind `transmitTail`.
    var batchingTransmissions = false
    var tailWritePending = false

    /// Resets the controller, reads the MAC address, and sets up both rings
    /// with `ringSize` descriptors (a multiple of 8) and 2048-byte buffers.
    /// Interrupts stay masked (polled mode) until `enableInterrupts`.
    public init(registers: Registers, dma: DMA, ringSize: Int = 64) throws(E1000Error) {
        guard ringSize >= 8, ringSize <= 4096, ringSize % 8 == 0 else { throw .invalidRingSize(ringSize) }
        self.registers = registers
        self.dma = dma
        self.ringSize = ringSize

        // Reset (§14.5): mask interrupts, set CTRL.RST, wait for it to clear.
        registers.write32(at: Self.imc, 0xFFFF_FFFF)
        registers.write32(at: Self.ctrl, registers.read32(at: Self.ctrl) | Self.ctrlReset)
        var spins = 0
        while registers.read32(at: Self.ctrl) & Self.ctrlReset != 0 {
            spins += 1
            if spins > 1_000_000 { throw .resetTimedOut }
        }
        registers.write32(at: Self.imc, 0xFFFF_FFFF)
        _ = registers.read32(at: Self.icr)
        let control = registers.read32(at: Self.ctrl) & ~(Self.ctrlLinkReset | Self.ctrlPHYReset)
        registers.write32(at: Self.ctrl, control | Self.ctrlSetLinkUp | Self.ctrlAutoSpeed)

        macAddress = try Self.readAddress(registers)
        let bytes = macAddress.bytes
        registers.write32(at: Self.ral0, UInt32(bytes.0) | UInt32(bytes.1) << 8 | UInt32(bytes.2) << 16 | UInt32(bytes.3) << 24)
        registers.write32(at: Self.rah0, UInt32(bytes.4) | UInt32(bytes.5) << 8 | 1 << 31)
        for entry in 0..<128 { registers.write32(at: Self.mta + 4 * entry, 0) }

        let ringBytes = ringSize * 16
        let bufferBytes = ringSize * Self.bufferSize
        guard let receiveRing = dma.allocate(byteCount: ringBytes, alignment: 128),
            let transmitRing = dma.allocate(byteCount: ringBytes, alignment: 128),
            let receiveBuffers = dma.allocate(byteCount: bufferBytes, alignment: 64),
            let transmitBuffers = dma.allocate(byteCount: bufferBytes, alignment: 64)
        else { throw .outOfDMAMemory(byteCount: 2 * (ringBytes + bufferBytes)) }
        self.receiveRing = receiveRing
        self.transmitRing = transmitRing
        self.receiveBuffers = receiveBuffers
        self.transmitBuffers = transmitBuffers

        // Receive (§14.4): every descriptor owns a buffer; the tail stops one
        // short of the head so head == tail means "ring full of free buffers".
        for index in 0..<ringSize {
            receiveRing.storeLE64(index * 16, dma.physicalAddress(of: receiveBuffers + index * Self.bufferSize))
        }
        dma.storeBarrier()
        let receiveBase = dma.physicalAddress(of: receiveRing)
        registers.write32(at: Self.rdbal, UInt32(truncatingIfNeeded: receiveBase))
        registers.write32(at: Self.rdbah, UInt32(truncatingIfNeeded: receiveBase >> 32))
        registers.write32(at: Self.rdlen, UInt32(ringBytes))
        registers.write32(at: Self.rdh, 0)
        registers.write32(at: Self.rdt, UInt32(ringSize - 1))
        registers.write32(at: Self.rctl, Self.rctlEnable | Self.rctlBroadcastAccept | Self.rctlStripCRC)

        // Transmit (§14.5).
        let transmitBase = dma.physicalAddress(of: transmitRing)
        registers.write32(at: Self.tdbal, UInt32(truncatingIfNeeded: transmitBase))
        registers.write32(at: Self.tdbah, UInt32(truncatingIfNeeded: transmitBase >> 32))
        registers.write32(at: Self.tdlen, UInt32(ringBytes))
        registers.write32(at: Self.tdh, 0)
        registers.write32(at: Self.tdt, 0)
        registers.write32(at: Self.tipg, 10 | 8 << 10 | 6 << 20)
        registers.write32(at: Self.tctl, Self.tctlEnable | Self.tctlPadShortPackets | 0x0F << 4 | 0x40 << 12)
    }

    /// RAL0/RAH0 when RAH0.AV is set (firmware or QEMU loaded them),
    /// otherwise EEPROM words 0...2 through EERD (§5.6.1, §13.4.4).
    static func readAddress(_ registers: Registers) throws(E1000Error) -> MACAddress {
        let high = registers.read32(at: rah0)
        if high & 1 << 31 != 0 {
            let low = registers.read32(at: ral0)
            return MACAddress(
                UInt8(truncatingIfNeeded: low), UInt8(truncatingIfNeeded: low >> 8), UInt8(truncatingIfNeeded: low >> 16),
                UInt8(truncatingIfNeeded: low >> 24), UInt8(truncatingIfNeeded: high), UInt8(truncatingIfNeeded: high >> 8))
        }
        var words: [UInt16] = []
        for word: UInt8 in 0..<3 {
            // EERD: START bit 0, DONE bit 4, ADDR bits 15:8, DATA bits 31:16.
            registers.write32(at: eerd, 1 | UInt32(word) << 8)
            var spins = 0
            var value = registers.read32(at: eerd)
            while value & 1 << 4 == 0 {
                spins += 1
                if spins > 100_000 { throw .eepromTimedOut(word: word) }
                value = registers.read32(at: eerd)
            }
            words.append(UInt16(truncatingIfNeeded: value >> 16))
        }
        return MACAddress(
            UInt8(truncatingIfNeeded: words[0]), UInt8(truncatingIfNeeded: words[0] >> 8),
            UInt8(truncatingIfNeeded: words[1]), UInt8(truncatingIfNeeded: words[1] >> 8),
            UInt8(truncatingIfNeeded: words[2]), UInt8(truncatingIfNeeded: words[2] >> 8))
    }

    /// STATUS.LU, read from the device now.
    public var isLinkUp: Bool { registers.read32(at: Self.status) & Self.statusLinkUp != 0 }

    /// Unmasks the causes the driver handles (link change, receive timer,
    /// receive overrun, descriptors low, transmit written back).
    public func enableInterrupts() {
        registers.write32(
            at: Self.ims,
            (E1000InterruptCauses.linkStatusChange.rawValue | E1000InterruptCauses.receiveTimer.rawValue
                | E1000InterruptCauses.receiveOverrun.rawValue | E1000InterruptCauses.receiveDescriptorsLow.rawValue
                | E1000InterruptCauses.transmitDescriptorWritten.rawValue))
    }

    /// Masks every cause (polled mode).
    public func disableInterrupts() { registers.write32(at: Self.imc, 0xFFFF_FFFF) }

    /// Stops receive and transmit DMA and masks interrupts; call before
    /// dropping the driver (its rings and buffers are then unused).
    public func shutdown() {
        registers.write32(at: Self.rctl, 0)
        registers.write32(at: Self.tctl, 0)
        registers.write32(at: Self.imc, 0xFFFF_FFFF)
    }

    /// Reads (and so clears) ICR; counts link-status changes and overruns.
    public mutating func interruptCauses() -> E1000InterruptCauses {
        let causes = E1000InterruptCauses(rawValue: registers.read32(at: Self.icr))
        if causes.contains(.linkStatusChange) {
            linkChanges += 1
            linkUpAtLastCheck = isLinkUp
            sendsUntilLinkCheck = Self.linkCheckInterval
        }
        if causes.contains(.receiveOverrun) { statistics.receiveDropped += 1 }
        return causes
    }

    /// Returns transmit descriptors the controller has written back (DD).
    public mutating func reclaimTransmitted() {
        dma.loadBarrier()
        while transmitClean != transmitTail {
            let descriptor = transmitRing + transmitClean * 16
            let status = descriptor.load(fromByteOffset: 12, as: UInt8.self)
            guard status & Self.descriptorDone != 0 else { break }
            transmitClean = (transmitClean + 1) % ringSize
        }
    }

    public mutating func send(frame: UnsafeRawBufferPointer) throws(NetworkInterfaceError) {
        guard frame.count >= 14 else { throw .frameTooSmall(size: frame.count) }
        guard frame.count <= Self.maximumFrame else { throw .frameTooLarge(size: frame.count, limit: Self.maximumFrame) }
        if sendsUntilLinkCheck == 0 {
            linkUpAtLastCheck = isLinkUp
            sendsUntilLinkCheck = Self.linkCheckInterval
        }
        sendsUntilLinkCheck -= 1
        guard linkUpAtLastCheck else { throw .linkDown }
        if (transmitTail + 1) % ringSize == transmitClean { reclaimTransmitted() }
        guard (transmitTail + 1) % ringSize != transmitClean else {
            // Descriptors held back by a batch must reach the controller,
            // or the ring never drains.
            writePendingTail()
            statistics.transmitErrors += 1
            throw .transmitQueueFull
        }
        let buffer = transmitBuffers + transmitTail * Self.bufferSize
        buffer.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        // Legacy transmit descriptor (§3.3.3): 0x0 address, 0x8 length,
        // 0xA CSO, 0xB CMD, 0xC STA, 0xD CSS, 0xE special.
        let descriptor = transmitRing + transmitTail * 16
        descriptor.storeLE64(0, dma.physicalAddress(of: buffer))
        descriptor.storeLE16(8, UInt16(frame.count))
        descriptor.storeBytes(of: 0, toByteOffset: 10, as: UInt8.self)
        descriptor.storeBytes(of: Self.transmitCommand, toByteOffset: 11, as: UInt8.self)
        descriptor.storeLE32(12, 0)
        dma.storeBarrier()
        transmitTail = (transmitTail + 1) % ringSize
        if batchingTransmissions {
            tailWritePending = true
        } else {
            registers.write32(at: Self.tdt, UInt32(transmitTail))
        }
        statistics.framesSent += 1
        statistics.bytesSent += frame.count
    }

    public mutating func beginTransmitBatch() { batchingTransmissions = true }

    public mutating func endTransmitBatch() {
        batchingTransmissions = false
        writePendingTail()
    }

    /// One TDT write for the descriptors queued since the batch began.
    mutating func writePendingTail() {
        guard tailWritePending else { return }
        tailWritePending = false
        registers.write32(at: Self.tdt, UInt32(transmitTail))
    }

    public mutating func receive(limit: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(NetworkInterfaceError) -> Int {
        var delivered = 0
        var returned = false
        var lastReturned = 0
        while delivered < limit {
            dma.loadBarrier()
            // Legacy receive descriptor (§3.2.3): 0x0 address, 0x8 length,
            // 0xA checksum, 0xC status, 0xD errors, 0xE special.
            let descriptor = receiveRing + receiveNext * 16
            let status = descriptor.load(fromByteOffset: 12, as: UInt8.self)
            guard status & Self.descriptorDone != 0 else { break }
            dma.loadBarrier()
            let errors = descriptor.load(fromByteOffset: 13, as: UInt8.self)
            let length = Int(descriptor.loadLE16(8))
            let endOfPacket = status & Self.endOfPacket != 0
            if discarding || !endOfPacket {
                // A frame spread over buffers is longer than the MTU allows.
                if endOfPacket {
                    discarding = false
                    statistics.receiveErrors += 1
                } else {
                    discarding = true
                }
            } else if errors & Self.receiveErrorMask != 0 || length < 14 || length > Self.bufferSize {
                statistics.receiveErrors += 1
            } else {
                body(UnsafeRawBufferPointer(start: receiveBuffers + receiveNext * Self.bufferSize, count: length))
                statistics.framesReceived += 1
                statistics.bytesReceived += length
                delivered += 1
            }
            // Give the descriptor back (clear its status); the tail moves after the batch.
            descriptor.storeLE64(0, dma.physicalAddress(of: receiveBuffers + receiveNext * Self.bufferSize))
            descriptor.storeLE64(8, 0)
            lastReturned = receiveNext
            receiveNext = (receiveNext + 1) % ringSize
            returned = true
        }
        if returned {
            // One tail write for the whole batch (each write is an MMIO exit).
            dma.storeBarrier()
            registers.write32(at: Self.rdt, UInt32(lastReturned))
            reclaimTransmitted()
        }
        return delivered
    }
}

extension E1000 {
    /// PCI IDs of the 82540EM (QEMU's `e1000`).
    public static var vendorID: UInt16 { 0x8086 }
    public static var deviceID: UInt16 { 0x100E }

    /// Maps BAR 0 of `function`, enables memory decoding and bus mastering,
    /// and initializes the controller.
    public init<Access: PCIConfigurationAccess, Mapper: MemoryMappedIO>(
        function: PCIAddress, access: Access, mapper: Mapper, dma: DMA, ringSize: Int = 64
    ) throws(E1000Error) where Mapper.Registers == Registers {
        let bar: PCIBAR?
        do throws(PCIError) { bar = try PCIBAR.read(function, index: 0, access: access) } catch { throw .pci(error) }
        guard let bar, !bar.isIO else { throw .pci(.invalidBARIndex(function: function, index: 0)) }
        guard bar.address != 0 else { throw .pci(.unassignedBAR(function: function, index: 0)) }
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(function, offset: PCIHeader.command, command | PCIHeader.commandMemorySpace | PCIHeader.commandBusMaster)
        try self.init(registers: mapper.map(physicalAddress: bar.address, length: bar.size), dma: dma, ringSize: ringSize)
    }
}
