// PlatformConsole: where the guest's output goes — the COM1 UART always
// (QEMU's -serial, the default under -nographic), and the VGA text screen
// too when the BIOS left one (a pc machine with a VGA device: SeaBIOS runs
// its VGA BIOS, which sets 80×25 colour text mode).
#if hasFeature(Embedded)
import CPUPrimitives

public struct PlatformConsole {
    var serial = Serial16550(ports: HardwarePorts())
    /// The VGA text screen, when one was found at boot.
    public internal(set) var screen: VGATextConsole<VGATextMemory>? = nil

    /// Programs the UART and looks for a text screen. Must run while page 0
    /// is still mapped (the boot map), for the BIOS data area.
    mutating func configure() {
        serial.configure()
        if VGATextMemory.isPresent() {
            screen = VGATextConsole(cells: VGATextMemory())
            VGATextMemory.hideCursor()
        }
    }

    /// One byte to every console, as is.
    public mutating func write(_ byte: UInt8) {
        bmk_console_device_write(byte)  // hw: COM1 and the text screen (PrivilegedOperations.h)
        bmk_xen_console_putc(byte)  // the Xen console ring once attached (XenPVKit; no-op elsewhere)
    }

    /// The hw devices' part of `write` (bmk_hw_console_device_write).
    mutating func writeToDevices(_ byte: UInt8) {
        serial.write(byte)
        screen?.write(byte)
    }

    /// Bytes to every console, "\n" as "\r\n".
    public mutating func write<Bytes: Sequence>(contentsOf bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            if byte == 0x0A { write(0x0D) }
            write(byte)
        }
    }
}

@_cdecl("bmk_hw_console_device_write")
public func hwConsoleDeviceWrite(_ byte: UInt8) {
    Platform.console.writeToDevices(byte)
}
#endif
