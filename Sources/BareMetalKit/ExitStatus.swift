// ExitStatus: how a guest's end is reported to the launcher through QEMU's
// isa-debug-exit device (port 0xF4): QEMU exits with (value << 1) | 1.
// Values start at 1 so that QEMU's own failure status (1) never reads as
// a guest status: application status s is written as s + 1.

/// The values a guest writes to the debug-exit port, and their meaning.
public enum GuestExit {
    /// I/O port of QEMU's `isa-debug-exit` device as the launcher configures it.
    public static var port: UInt16 { 0xF4 }
    /// Largest exit status an application can report.
    public static var maximumStatus: Int32 { 119 }
    /// Written when the guest panics.
    public static var panicValue: UInt8 { 0x7F }
    /// Written when the CPU raised an exception the guest did not handle.
    public static var exceptionValue: UInt8 { 0x7E }

    /// The port value for an application's exit status; statuses outside
    /// 0...maximumStatus are reported as 1, like a failing program.
    public static func portValue(forStatus status: Int32) -> UInt8 {
        (0...maximumStatus).contains(status) ? UInt8(status + 1) : 2
    }

    /// What a QEMU exit code means, when QEMU ended through the device.
    public enum Outcome: Equatable, Sendable {
        case exited(status: Int32)
        case panicked
        case exception
        /// QEMU ended some other way (no device write: reset, quit, signal).
        case noGuestStatus(qemuStatus: Int32)
    }

    public static func outcome(qemuStatus: Int32) -> Outcome {
        guard qemuStatus & 1 == 1, qemuStatus > 0, qemuStatus <= 255 else { return .noGuestStatus(qemuStatus: qemuStatus) }
        let value = (qemuStatus - 1) >> 1
        switch UInt8(value) {
        case panicValue: return .panicked
        case exceptionValue: return .exception
        default:
            return (1...maximumStatus + 1).contains(value) ? .exited(status: value - 1) : .noGuestStatus(qemuStatus: qemuStatus)
        }
    }
}
