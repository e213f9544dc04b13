// XenGuestConfiguration: where a Xen guest finds the launcher's JSON, as
// rumprun did: on the command line when it carries an object, else in
// xenstore under the domain's home at `rumprun/cfg` (the launcher's
// `xenstore-write /local/domain/<domid>/rumprun/cfg`, see XenLauncher).
import BareMetalKit
import CXen

/// Hypercalls for start of day, before any event handler exists: waiting
/// (`SCHEDOP_block`, which would re-enable upcalls) becomes `SCHEDOP_yield`,
/// so the xenstore and console clients poll their rings instead. Kept apart
/// from `WaitingHypercalls` on purpose: start-of-day code makes no call
/// through an existential (XenImageTests walks its call graph), and merging
/// the two behind an enum of strategies brought one in.
public struct PollingHypercalls<Base: Hypercalls>: Hypercalls {
    public var base: Base

    public init(_ base: Base) { self.base = base }

    public mutating func schedOp(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int {
        base.schedOp(command == SCHEDOP_block ? SCHEDOP_yield : command, argument)
    }
    public mutating func eventChannelOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.eventChannelOp(command, argument)
    }
    public mutating func grantTableOp(_ command: UInt32, _ arguments: UnsafeMutableRawPointer, count: UInt32) -> Int {
        base.grantTableOp(command, arguments, count: count)
    }
    public mutating func memoryOp(_ command: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.memoryOp(command, argument)
    }
    public mutating func hvmOp(_ operation: Int32, _ argument: UnsafeMutableRawPointer) -> Int {
        base.hvmOp(operation, argument)
    }
    public mutating func consoleIO(_ command: Int32, count: Int32, _ buffer: UnsafeMutableRawPointer) -> Int {
        base.consoleIO(command, count: count, buffer)
    }
    public mutating func setTimerOp(_ timeout: UInt64) -> Int { base.setTimerOp(timeout) }
    public mutating func vcpuOp(_ command: Int32, vcpu: UInt32, _ argument: UnsafeMutableRawPointer?) -> Int {
        base.vcpuOp(command, vcpu: vcpu, argument)
    }
    public mutating func mmuUpdate(
        _ requests: UnsafeMutablePointer<mmu_update>, count: UInt32,
        successCount: UnsafeMutablePointer<UInt32>?, domain: domid_t
    ) -> Int {
        base.mmuUpdate(requests, count: count, successCount: successCount, domain: domain)
    }
    public mutating func updateVAMapping(_ virtualAddress: UInt64, _ entry: UInt64, flags: UInt64) -> Int {
        base.updateVAMapping(virtualAddress, entry, flags: flags)
    }
}

public enum XenBootConfiguration {
    /// The key below the domain's home that the launcher writes.
    public static let storeKey: StaticString = "rumprun/cfg"

    /// Whether `commandLine` carries the JSON itself (a `{`).
    public static func commandLineHasConfiguration(_ commandLine: UnsafeRawBufferPointer) -> Bool {
        commandLine.contains(UInt8(ascii: "{"))
    }

    /// Reads `/local/domain/<domid>/rumprun/cfg` into `buffer` and
    /// NUL-terminates it; returns its length, or nil when the store has no
    /// `domid` or no such key (no configuration: the command line stands).
    /// Other store failures are thrown. Allocates nothing.
    public static func readFromStore<H: Hypercalls>(
        into buffer: UnsafeMutableRawBufferPointer, reader: inout XenStoreBootReader<H>
    ) throws(XenStoreBootReadError) -> Int? {
        // Relative paths resolve below /local/domain/<domid> in xenstored.
        var domainID: (UInt64, UInt64) = (0, 0)
        let domainIDLength: Int
        do {
            domainIDLength = try withUnsafeMutableBytes(of: &domainID) { (bytes) throws(XenStoreBootReadError) -> Int in
                let key: StaticString = "domid"
                return try reader.read(path: UnsafeRawBufferPointer(start: key.utf8Start, count: key.utf8CodeUnitCount), into: bytes)
            }
        } catch .store(.noEntry) {
            return nil
        } catch .valueTooLong {
            throw .malformedValue
        }
        // "/local/domain/" + digits + "/" + storeKey, on the stack.
        var path: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        let pathLength = try withUnsafeMutableBytes(of: &path) { (bytes) throws(XenStoreBootReadError) -> Int in
            var count = 0
            func append(_ text: StaticString) {
                for index in 0..<text.utf8CodeUnitCount {
                    bytes[count] = text.utf8Start[index]
                    count += 1
                }
            }
            append("/local/domain/")
            try withUnsafeBytes(of: &domainID) { (digits) throws(XenStoreBootReadError) in
                guard domainIDLength > 0, domainIDLength <= 5 else { throw .malformedValue }
                for index in 0..<domainIDLength {
                    guard digits[index] >= UInt8(ascii: "0"), digits[index] <= UInt8(ascii: "9") else { throw .malformedValue }
                    bytes[count] = digits[index]
                    count += 1
                }
            }
            append("/")
            append(storeKey)
            return count
        }
        guard buffer.count > 0 else { throw .valueTooLong(length: 0, capacity: 0) }
        let length: Int
        do {
            length = try withUnsafeBytes(of: &path) { (bytes) throws(XenStoreBootReadError) -> Int in
                try reader.read(path: UnsafeRawBufferPointer(start: bytes.baseAddress, count: pathLength),
                                into: UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: buffer.count - 1))
            }
        } catch .store(.noEntry) {
            return nil
        }
        buffer[length] = 0
        return length
    }
}

public enum XenPVHConfiguration {
    /// The hw boot reads at most `BootInfoParser.commandLineLimit` bytes
    /// with the NUL, so that is the most this hands over.
    public static var commandLineCapacity: Int { BootInfoParser<NoPhysicalMemory>.commandLineLimit }

    /// Only names `BootInfoParser`'s static limits.
    public struct NoPhysicalMemory: PhysicalMemoryReader {
        public func loadByte(at address: UInt64) -> UInt8? { nil }
    }

    /// A PVH domain started by `xl` gets no JSON on its command line (the
    /// launcher writes it to xenstore), but the hw boot reads its
    /// configuration from `hvm_start_info.cmdline_paddr`. When the command
    /// line has no JSON and the store has it, this reads it into `buffer`
    /// (physical address `bufferAddress`), NUL-terminated, and points
    /// `cmdline_paddr` there, so the hw boot parses it as if the loader had
    /// passed it. Returns whether it did. Allocates nothing (it runs before
    /// the hw platform has a heap).
    public static func provide<H: Hypercalls>(
        startInfo: UnsafeMutablePointer<hvm_start_info>, commandLine: UnsafeRawBufferPointer,
        buffer: UnsafeMutableRawBufferPointer, bufferAddress: UInt64, reader: inout XenStoreBootReader<H>
    ) throws(XenStoreBootReadError) -> Bool {
        guard !XenBootConfiguration.commandLineHasConfiguration(commandLine) else { return false }
        let usable = UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: min(buffer.count, commandLineCapacity))
        guard try XenBootConfiguration.readFromStore(into: usable, reader: &reader) != nil else { return false }
        startInfo.pointee.cmdline_paddr = bufferAddress
        return true
    }
}
