// StartInfo: the page Xen hands a PV guest at entry (Xen public/xen.h
// `struct start_info`, "Start-of-day memory layout"), read and checked
// before anything trusts it.
import CXen

/// What is wrong with a `start_info` page.
public enum StartInfoError: Error, Equatable, Sendable {
    /// The magic is not "xen-3.0-x86_64" (the 64-bit PV ABI this image
    /// speaks); `found` holds what was there.
    case badMagic(found: StartInfoMagic)
    /// `nr_pages` is zero or smaller than the image and its boot data.
    case tooFewPages(UInt64)
    /// `shared_info` is zero or not page aligned.
    case badSharedInfo(UInt64)
    /// The xenstore or console page is missing (an unprivileged guest
    /// needs both; dom0 has neither).
    case missingStore
    case missingConsole
    /// `mfn_list` (the pseudo-physical to machine list) is missing.
    case missingFrameList
    /// `cmd_line` has no NUL within `MAX_GUEST_CMDLINE` bytes.
    case commandLineNotTerminated
}

/// The 32 magic bytes of a `start_info`, held without allocating (the PV
/// entry runs before any heap exists).
public struct StartInfoMagic: Equatable, Sendable {
    var words: (UInt64, UInt64, UInt64, UInt64)

    public init(_ info: UnsafePointer<start_info>) {
        words = UnsafeRawPointer(info).loadUnaligned(
            fromByteOffset: CXEN_OFFSETOF_start_info_magic, as: (UInt64, UInt64, UInt64, UInt64).self)
    }

    public static func == (a: StartInfoMagic, b: StartInfoMagic) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    /// Whether it starts with "xen-3.0-x86_64" followed by a NUL or a suffix.
    public var isX86_64PV: Bool {
        let expected: StaticString = "xen-3.0-x86_64"
        var copy = words
        return withUnsafeBytes(of: &copy) { bytes in
            for index in 0..<expected.utf8CodeUnitCount where bytes[index] != expected.utf8Start[index] { return false }
            return true
        }
    }

    /// The bytes up to the first NUL (allocates; for reports and tests).
    public var text: [UInt8] {
        var copy = words
        return withUnsafeBytes(of: &copy) { Array($0.prefix { $0 != 0 }) }
    }
}

/// A validated copy of a PV guest's `start_info`.
public struct XenStartInfo: Equatable, Sendable {
    /// Pages of pseudo-physical memory the domain has (`nr_pages`).
    public var pageCount: UInt64
    /// Machine address of the shared info page (`shared_info`).
    public var sharedInfoAddress: UInt64
    /// `SIF_*` flags.
    public var flags: UInt32
    public var channels: XenBootChannels
    /// Virtual address of the pseudo-physical-to-machine frame list (`mfn_list`).
    public var frameListAddress: UInt64
    /// Virtual address and frame count of the bootstrap page tables.
    public var pageTableBase: UInt64
    public var pageTableFrames: UInt64
    /// The initial module (ramdisk), if any: virtual address and length.
    public var moduleStart: UInt64
    public var moduleLength: UInt64
    /// Length of `cmd_line` before its NUL.
    public var commandLineLength: Int

    /// `SIF_PRIVILEGED`.
    public var isPrivileged: Bool { flags & cxen_sif_privileged != 0 }
    /// `SIF_INITDOMAIN`: dom0, which has no xenstore or console page.
    public var isInitialDomain: Bool { flags & cxen_sif_initdomain != 0 }

    /// Reads and checks `start_info` at `info`, allocating nothing. The
    /// caller guarantees `MemoryLayout<start_info>.size` readable bytes there.
    public init(_ info: UnsafePointer<start_info>, minimumPages: UInt64 = 1) throws(StartInfoError) {
        let raw = UnsafeRawPointer(info)
        let magic = StartInfoMagic(info)
        guard magic.isX86_64PV else { throw .badMagic(found: magic) }

        let value = info.pointee
        pageCount = UInt64(value.nr_pages)
        guard pageCount >= max(minimumPages, 1) else { throw .tooFewPages(pageCount) }
        sharedInfoAddress = UInt64(value.shared_info)
        guard sharedInfoAddress != 0, sharedInfoAddress % UInt64(xenPageSize) == 0 else {
            throw .badSharedInfo(sharedInfoAddress)
        }
        flags = value.flags
        channels = XenBootChannels(startInfo: info)
        if flags & cxen_sif_initdomain == 0 {
            guard channels.storeFrame != 0 else { throw .missingStore }
            guard channels.consoleFrame != 0 else { throw .missingConsole }
        }
        frameListAddress = UInt64(value.mfn_list)
        guard frameListAddress != 0 else { throw .missingFrameList }
        pageTableBase = UInt64(value.pt_base)
        pageTableFrames = UInt64(value.nr_pt_frames)
        moduleStart = UInt64(value.mod_start)
        moduleLength = UInt64(value.mod_len)

        var length = 0
        while length < Int(cxen_max_guest_cmdline)
            && raw.load(fromByteOffset: CXEN_OFFSETOF_start_info_cmd_line + length, as: UInt8.self) != 0
        {
            length += 1
        }
        guard length < Int(cxen_max_guest_cmdline) else { throw .commandLineNotTerminated }
        commandLineLength = length
    }

    /// The command line's bytes inside `info` (the page it was read from).
    public func commandLine(in info: UnsafePointer<start_info>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: UnsafeRawPointer(info) + CXEN_OFFSETOF_start_info_cmd_line, count: commandLineLength)
    }
}
