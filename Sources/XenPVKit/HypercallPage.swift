// HypercallPage: the guest's `Hypercalls` conformer, calling through the
// hypercall page (Xen public/xen.h __HYPERVISOR_* numbers, x86-64 register
// ABI in CXen's cxen_hypercall). Guest world only; never run from this
// repository's tests (no Xen host is available).
#if hasFeature(Embedded)
import CXen

/// Hypercalls through the page the boot code set up as `cxen_hypercall_page`.
public struct HypercallPage: Hypercalls {
    @inline(__always) public init() {}

    @inline(__always)
    func call(_ op: Int32, _ a1: UInt = 0, _ a2: UInt = 0, _ a3: UInt = 0, _ a4: UInt = 0, _ a5: UInt = 0) -> Int {
        cxen_hypercall(UInt32(op), a1, a2, a3, a4, a5)
    }

    @inline(__always) static func word(_ value: Int32) -> UInt { UInt(bitPattern: Int(value)) }
    @inline(__always) static func word(_ pointer: UnsafeMutableRawPointer?) -> UInt { UInt(bitPattern: pointer) }

    public func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int {
        call(__HYPERVISOR_sched_op, Self.word(command), Self.word(argument))
    }
    public func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        call(__HYPERVISOR_event_channel_op, Self.word(command), Self.word(argument))
    }
    public func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int {
        call(__HYPERVISOR_grant_table_op, UInt(command), Self.word(arguments), UInt(count))
    }
    public func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        call(__HYPERVISOR_memory_op, Self.word(command), Self.word(argument))
    }
    public func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        call(__HYPERVISOR_hvm_op, Self.word(operation), Self.word(argument))
    }
    public func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int {
        call(__HYPERVISOR_console_io, Self.word(command), Self.word(count), Self.word(buffer))
    }
    public func setTimerOp(_ timeout: UInt64) -> Int {
        call(__HYPERVISOR_set_timer_op, UInt(timeout))
    }
    public func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int {
        call(__HYPERVISOR_vcpu_op, Self.word(command), UInt(vcpu), Self.word(argument))
    }
    public func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32,
        successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t
    ) -> Int {
        call(
            __HYPERVISOR_mmu_update, UInt(bitPattern: requests), UInt(count), UInt(bitPattern: successCount),
            UInt(domain))
    }
    public func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int {
        call(__HYPERVISOR_update_va_mapping, UInt(virtualAddress), UInt(entry), UInt(flags))
    }
}
#endif
