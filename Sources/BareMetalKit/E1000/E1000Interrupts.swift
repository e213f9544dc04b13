// E1000Interrupts: interrupt delivery for the 82540EM (PCI/PCI-X Family of
// Gigabit Ethernet Controllers SDM §13.4.17–13.4.21: ICR, ICS, IMS, IMC):
// MSI when the function has the capability, else INTx# through the I/O
// APIC. The handler reads ICR, which clears the causes and lowers INTx#.
#if hasFeature(Embedded)

extension E1000 where Registers == MMIORegisters {
    /// 0x00C8 ICS: writing a cause bit raises that interrupt (tests, and
    /// drivers that want a software-triggered pass).
    static var ics: Int { 0x00C8 }

    /// Connects the controller's interrupt (MSI if offered, else INTx#),
    /// then unmasks the causes the driver handles (`enableInterrupts`).
    /// `handler` gets the causes read from ICR; an interrupt whose ICR
    /// reads zero is not claimed (a shared or spurious line).
    public func attachInterrupts<Access: PCIConfigurationAccess>(
        function: PCIAddress, access: Access, handler: @escaping (E1000InterruptCauses) -> Void
    ) throws(InterruptError) -> InterruptRegistration {
        let registers = self.registers
        let body: InterruptHandler = { _ in
            let causes = E1000InterruptCauses(rawValue: registers.read32(at: 0x00C0))
            guard causes.rawValue != 0 else { return false }
            handler(causes)
            return true
        }
        let msi: MSICapability?
        do throws(PCIError) { msi = try MSICapability.find(function, access: access) } catch { throw .pci(error) }
        let registration: InterruptRegistration
        if let msi {
            registration = try Interrupts.register(handler: body)
            do throws(PCIError) {
                try msi.program(message: Interrupts.message(vector: registration.vector), access: access)
            } catch {
                Interrupts.unregister(registration)
                throw .pci(error)
            }
            msi.setEnabled(true, access: access)
        } else {
            registration = try Interrupts.register(pciFunction: function, access: access, handler: body)
            let command = access.read16(function, offset: PCIHeader.command)
            access.write16(function, offset: PCIHeader.command, command & ~PCIHeader.commandInterruptDisable)
        }
        _ = registers.read32(at: 0x00C0)  // drop causes latched while polled
        enableInterrupts()
        return registration
    }

    /// Masks the causes and frees the vector (MSI is left programmed but
    /// the device no longer signals).
    public func detachInterrupts(_ registration: InterruptRegistration) {
        disableInterrupts()
        Interrupts.unregister(registration)
    }

    /// Raises `causes` through ICS, as if the hardware had seen them.
    public func raise(_ causes: E1000InterruptCauses) {
        registers.write32(at: Self.ics, causes.rawValue)
    }
}
#endif
