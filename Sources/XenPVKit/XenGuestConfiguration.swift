// XenGuestConfiguration: where a Xen guest finds the launcher's JSON, as
// rumprun did: on the command line when it carries an object, else in
// xenstore under the domain's home at `rumprun/cfg` (the launcher's
// `xenstore-write /local/domain/<domid>/rumprun/cfg`, see XenLauncher).
import CXen

/// Hypercalls for start of day, before any event handler exists: waiting
/// (`SCHEDOP_block`, which would re-enable upcalls) becomes `SCHEDOP_yield`,
/// so the xenstore and console clients poll their rings instead.
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

public enum XenGuestConfiguration {
    /// The xenstore key, relative to the domain's home, the launcher writes.
    public static let storeKey = "rumprun/cfg"

    /// The configuration text: `commandLine` when it holds a JSON object
    /// (a `{`), else the value of `domid`'s home `rumprun/cfg` from
    /// `store`, else `commandLine` as it is (no configuration given).
    /// A store error other than a missing key is thrown.
    public static func text<H: Hypercalls>(
        commandLine: [UInt8], store: inout XenStore<H>
    ) throws(XenStoreError) -> [UInt8] {
        if commandLine.contains(UInt8(ascii: "{")) { return commandLine }
        // Relative paths resolve below /local/domain/<domid> in xenstored.
        let domainID: [UInt8]
        do {
            domainID = try store.read("domid")
        } catch .store(.noEntry, _) {
            return commandLine
        }
        var path = "/local/domain/"
        path += String(decoding: domainID.prefix { $0 != 0 }, as: UTF8.self)
        path += "/" + storeKey
        do {
            let value = try store.read(path)
            return Array(value.prefix { $0 != 0 })
        } catch .store(.noEntry, _) {
            return commandLine
        }
    }
}

/// Why the PVH configuration could not be handed to the hw boot.
public enum XenPVHConfigurationError: Error, Equatable, Sendable {
    case store(XenStoreError)
    /// The store's value does not fit the buffer (with its NUL).
    case tooLong(length: Int, capacity: Int)
}

public enum XenPVHConfiguration {
    /// A PVH domain started by `xl` gets no JSON on its command line (the
    /// launcher writes it to xenstore), but the hw boot reads its
    /// configuration from `hvm_start_info.cmdline_paddr`. When the store has
    /// it, this copies it, NUL-terminated, into `buffer` (physical address
    /// `bufferAddress`) and points `cmdline_paddr` there, so the hw boot
    /// parses it as if the loader had passed it. Returns whether it did.
    ///
    /// `commandLine` is the current command line's text (empty for none).
    public static func provide<H: Hypercalls>(
        startInfo: UnsafeMutablePointer<hvm_start_info>, commandLine: [UInt8],
        buffer: UnsafeMutableRawBufferPointer, bufferAddress: UInt64, store: inout XenStore<H>
    ) throws(XenPVHConfigurationError) -> Bool {
        let text: [UInt8]
        do { text = try XenGuestConfiguration.text(commandLine: commandLine, store: &store) } catch { throw .store(error) }
        guard text != commandLine else { return false }
        guard text.count < buffer.count else { throw .tooLong(length: text.count, capacity: buffer.count) }
        for (index, byte) in text.enumerated() { buffer[index] = byte }
        buffer[text.count] = 0
        startInfo.pointee.cmdline_paddr = bufferAddress
        return true
    }
}
