// PortIO: x86 I/O-port access behind a protocol, so that drivers run against
// the real CPU in the guest and against device models in host tests.
#if hasFeature(Embedded)
import CPUPrimitives
#endif

/// Access to the x86 I/O address space (Intel SDM vol. 1 §19).
public protocol PortIO {
    mutating func read8(_ port: UInt16) -> UInt8
    mutating func write8(_ port: UInt16, _ value: UInt8)
    mutating func write32(_ port: UInt16, _ value: UInt32)
}

#if hasFeature(Embedded)
/// The CPU's own `in`/`out` instructions.
public struct HardwarePorts: PortIO {
    @inline(__always) public init() {}
    @inline(__always) public func read8(_ port: UInt16) -> UInt8 { cpu_inb(port) }
    @inline(__always) public func write8(_ port: UInt16, _ value: UInt8) { cpu_outb(port, value) }
    @inline(__always) public func write32(_ port: UInt16, _ value: UInt32) { cpu_outl(port, value) }
}
#endif
