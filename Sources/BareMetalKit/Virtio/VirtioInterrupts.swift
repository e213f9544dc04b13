// VirtioInterrupts: interrupt delivery for virtio PCI devices (virtio 1.2
// §4.1.4.5 ISR, §4.1.5.1.2 MSI-X vector configuration): MSI-X when the
// function offers it (one vector for configuration changes, one per queue),
// else INTx# through the I/O APIC, where the handler reads the ISR to
// lower the level-triggered line.
#if hasFeature(Embedded)

/// How a virtio device's interrupts were connected.
public struct VirtioInterruptBinding {
    public enum Kind: Equatable, Sendable {
        case msix
        case intx
    }

    public let kind: Kind
    /// MSI-X: the configuration vector first, then one per queue; INTx: one.
    public let registrations: [InterruptRegistration]
    /// The MSI-X table (MSI-X only), to mask entries on detach.
    let table: MSIXTable<MMIORegisters>?
    let function: PCIAddress

    /// The I/O APIC line (INTx only).
    public var line: InterruptLine? { registrations.first?.line }

    /// Interrupts taken on this binding's vectors.
    public var interruptCount: UInt64 {
        var total: UInt64 = 0
        for registration in registrations { total += Interrupts.count(vector: registration.vector) }
        return total
    }

    /// Masks the device's interrupts and frees the vectors; reset the
    /// device before or after.
    public func detach<Access: PCIConfigurationAccess>(access: Access) {
        if let table {
            table.maskAll()
            table.capability.setControl(enabled: false, functionMasked: true, access: access)
        }
        for registration in registrations { Interrupts.unregister(registration) }
    }
}

extension VirtioPCIModernTransport where Registers == MMIORegisters {
    /// Connects the device's interrupts: MSI-X with `queueCount` queue
    /// vectors when the function has a table big enough (`preferMSIX`),
    /// else INTx#. `handler` gets the vector; for INTx it runs only when the
    /// ISR showed a reason (reading the ISR also clears a configuration-
    /// change bit, so the driver's own DEVICE_NEEDS_RESET check then sees
    /// nothing: the handler is told through its return path instead).
    /// Call after the driver set DRIVER_OK.
    public func attachInterrupts<Access: PCIConfigurationAccess>(
        access: Access, queueCount: Int, preferMSIX: Bool = true, handler: @escaping (UInt8) -> Void
    ) throws(InterruptError) -> VirtioInterruptBinding {
        if preferMSIX, let binding = try attachMSIX(access: access, queueCount: queueCount, handler: handler) {
            return binding
        }
        let isr = self.isr
        let registration = try Interrupts.register(pciFunction: function, access: access) { vector in
            // The ISR read deasserts INTx#; zero means another device's line.
            guard isr.read8(at: 0) != 0 else { return false }
            handler(vector)
            return true
        }
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(function, offset: PCIHeader.command, command & ~PCIHeader.commandInterruptDisable)
        return VirtioInterruptBinding(kind: .intx, registrations: [registration], table: nil, function: function)
    }

    func attachMSIX<Access: PCIConfigurationAccess>(
        access: Access, queueCount: Int, handler: @escaping (UInt8) -> Void
    ) throws(InterruptError) -> VirtioInterruptBinding? {
        let capability: MSIXCapability?
        let bars: [PCIBAR?]
        do throws(PCIError) {
            capability = try MSIXCapability.find(function, access: access)
            bars = try PCIBAR.readAll(function, access: access)
        } catch {
            throw .pci(error)
        }
        guard let capability, capability.tableSize >= queueCount + 1 else { return nil }
        let table: MSIXTable<MMIORegisters>
        do throws(PCIError) {
            table = try MSIXTable(capability: capability, bars: bars, mapper: IdentityMappedIO())
        } catch {
            throw .pci(error)
        }
        capability.setControl(enabled: true, functionMasked: true, access: access)
        table.maskAll()
        var registrations: [InterruptRegistration] = []
        func undo() {
            for registration in registrations { Interrupts.unregister(registration) }
            table.maskAll()
            capability.setControl(enabled: false, functionMasked: false, access: access)
        }
        for entry in 0...queueCount {
            do throws(InterruptError) {
                let registration = try Interrupts.register { vector in
                    handler(vector)
                    return true  // a message is always meant for us
                }
                registrations.append(registration)
                try? table.program(vector: entry, message: Interrupts.message(vector: registration.vector))
                try? table.setMasked(vector: entry, false)
            } catch {
                undo()
                throw error
            }
        }
        // Entry 0 for configuration changes, entry 1 + q for queue q; a
        // device that cannot take a vector answers NO_VECTOR (0xFFFF).
        var accepted = setMSIXVectors(configuration: 0) == 0
        for queue in 0..<queueCount where setMSIXVector(queue: queue, vector: UInt16(queue + 1)) != UInt16(queue + 1) {
            accepted = false
        }
        guard accepted else {
            _ = setMSIXVectors(configuration: 0xFFFF)
            for queue in 0..<queueCount { _ = setMSIXVector(queue: queue, vector: 0xFFFF) }
            undo()
            return nil
        }
        capability.setControl(enabled: true, functionMasked: false, access: access)
        return VirtioInterruptBinding(kind: .msix, registrations: registrations, table: table, function: function)
    }
}

extension VirtioPCILegacyTransport where Registers == PortRegisters {
    /// Connects a legacy device's INTx# (MSI-X stays off, so the device
    /// configuration stays at 0x14). The handler runs when the ISR read
    /// (which deasserts the line) was non-zero.
    public func attachInterrupts<Access: PCIConfigurationAccess>(
        function: PCIAddress, access: Access, handler: @escaping (UInt8) -> Void
    ) throws(InterruptError) -> VirtioInterruptBinding {
        let registers = self.registers
        let registration = try Interrupts.register(pciFunction: function, access: access) { vector in
            guard registers.read8(at: 0x13) != 0 else { return false }
            handler(vector)
            return true
        }
        let command = access.read16(function, offset: PCIHeader.command)
        access.write16(function, offset: PCIHeader.command, command & ~PCIHeader.commandInterruptDisable)
        return VirtioInterruptBinding(kind: .intx, registrations: [registration], table: nil, function: function)
    }
}
#endif
