// StartInfo: the page Xen hands a PV guest at entry (Xen public/xen.h
// `struct start_info`, "Start-of-day memory layout"), read and checked
// before anything trusts it.
import CXen

/// What is wrong with a `start_info` page.
public enum StartInfoError: Error, Equatable, Sendable {
    /// The magic is not "xen-3.0-x86_64" (the 64-bit PV ABI this image
    /// speaks); `found` holds its bytes up to the first NUL.
    case badMagic(found: [UInt8])
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

/// A validated copy of a PV guest's `start_info`.
public struct XenStartInfo: Equatable, Sendable {
    /// "xen-<version>-<platform>" as xen.h describes it; the x86-64 PV ABI.
    public static let expectedMagic: [UInt8] = Array("xen-3.0-x86_64".utf8)

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
    /// The command line, without its NUL.
    public var commandLine: [UInt8]

    /// `SIF_PRIVILEGED`.
    public var isPrivileged: Bool { flags & cxen_sif_privileged != 0 }
    /// `SIF_INITDOMAIN`: dom0, which has no xenstore or console page.
    public var isInitialDomain: Bool { flags & cxen_sif_initdomain != 0 }

    /// Reads and checks `start_info` at `info`. The caller guarantees
    /// `MemoryLayout<start_info>.size` readable bytes there.
    public init(_ info: UnsafePointer<start_info>, minimumPages: UInt64 = 1) throws(StartInfoError) {
        let raw = UnsafeRawPointer(info)
        let magicCapacity = MemoryLayout.size(ofValue: info.pointee.magic)
        var magic: [UInt8] = []
        for index in 0..<magicCapacity {
            let byte = raw.load(fromByteOffset: CXEN_OFFSETOF_start_info_magic + index, as: UInt8.self)
            if byte == 0 { break }
            magic.append(byte)
        }
        guard magic.count >= Self.expectedMagic.count, Array(magic.prefix(Self.expectedMagic.count)) == Self.expectedMagic else {
            throw .badMagic(found: magic)
        }

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

        var line: [UInt8] = []
        var terminated = false
        for index in 0..<Int(cxen_max_guest_cmdline) {
            let byte = raw.load(fromByteOffset: CXEN_OFFSETOF_start_info_cmd_line + index, as: UInt8.self)
            if byte == 0 {
                terminated = true
                break
            }
            line.append(byte)
        }
        guard terminated else { throw .commandLineNotTerminated }
        commandLine = line
    }
}
