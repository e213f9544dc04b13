// Exceptions: the interrupt descriptor table: gates for the 32 architectural
// exception vectors and for the external vectors 32–255 (Interrupts), and
// the report a fault gives: vector, error code, RIP, RSP, CR2 and a
// frame-pointer backtrace, then the exception exit status
// (Intel SDM vol. 3A §6.10–6.14). Swift runtime traps (bounds checks,
// overflow, force-unwrapping nil) arrive here as #UD.
#if hasFeature(Embedded)
import CPUPrimitives

public enum Exceptions {
    /// Fills gates 0–31 with the isr.S stubs (interrupt gates switching to
    /// IST slot `interruptStack`, 0 for the current stack), marks 32–255
    /// absent and loads the IDT.
    public static func install(interruptStack: UInt8 = 0) {
        let table = UnsafeMutableRawPointer(bitPattern: bmk_idt_address())!
        for vector in 0..<256 {
            let gate =
                vector < 32
                ? GateDescriptor(handler: bmk_exception_stub(UInt32(vector)), selector: GlobalDescriptorTableLayout.kernelCodeSelector, interruptStack: interruptStack)
                : GateDescriptor.absent
            table.storeBytes(of: gate.low, toByteOffset: vector * 16, as: UInt64.self)
            table.storeBytes(of: gate.high, toByteOffset: vector * 16 + 8, as: UInt64.self)
        }
        cpu_load_idt(UInt64(bmk_idt_address()), UInt16(256 * 16 - 1))
    }

    /// Fills the absent gates among 32–255 with the isr.S interrupt stubs
    /// (interrupt gates, so handlers start with IF clear, on IST slot
    /// `interruptStack`). A gate another subsystem installed already (the
    /// SMP wake-up IPI) is kept, whatever the boot order.
    public static func installInterruptGates(interruptStack: UInt8) {
        let table = UnsafeMutableRawPointer(bitPattern: bmk_idt_address())!
        for vector in 32..<256 {
            // Present is bit 47 of the low quadword.
            if table.load(fromByteOffset: vector * 16, as: UInt64.self) & (1 << 47) != 0 { continue }
            let gate = GateDescriptor(
                handler: bmk_interrupt_stub(UInt32(vector)), selector: GlobalDescriptorTableLayout.kernelCodeSelector,
                interruptStack: interruptStack)
            table.storeBytes(of: gate.low, toByteOffset: vector * 16, as: UInt64.self)
            table.storeBytes(of: gate.high, toByteOffset: vector * 16 + 8, as: UInt64.self)
        }
    }
}

/// Called by isr.S with the saved frame; reports without allocating.
@_cdecl("bmk_exception")
public func exceptionEntry(_ frame: UnsafePointer<UInt64>) -> Never {
    Platform.claimStop()
    let vector = frame[15]
    let errorCode = frame[16]
    let instruction = frame[17]
    let stack = frame[20]
    Platform.write("rumprun: exception: ")
    if let known = ExceptionVector(rawValue: UInt8(truncatingIfNeeded: vector)) {
        Platform.write(known.mnemonic)
    } else {
        Platform.write("reserved")
    }
    Platform.write(" (vector ")
    Platform.writeDecimal(vector)
    Platform.write(") error code ")
    Platform.writeHex(errorCode)
    Platform.write(" RIP ")
    Platform.writeHex(instruction)
    Platform.write(" RSP ")
    Platform.writeHex(stack)
    Platform.write(" CR2 ")
    Platform.writeHex(cpu_read_cr2())
    Platform.write("\n")
    // Frame pointers, while they look like frames inside identity-mapped memory.
    var framePointer = frame[8]
    var depth = 0
    while depth < 16, framePointer >= 0x1000, framePointer < 0xFFFF_F000, framePointer & 7 == 0 {
        let returnAddress = UnsafePointer<UInt64>(bitPattern: UInt(framePointer + 8))!.pointee
        if returnAddress == 0 { break }
        Platform.write("rumprun:   #")
        Platform.writeDecimal(UInt64(depth))
        Platform.write(" ")
        Platform.writeHex(returnAddress)
        Platform.write("\n")
        let next = UnsafePointer<UInt64>(bitPattern: UInt(framePointer))!.pointee
        if next <= framePointer { break }
        framePointer = next
        depth += 1
    }
    Platform.halt(portValue: GuestExit.exceptionValue)
}
#endif
