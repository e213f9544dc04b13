// frames: raw Ethernet frames between the BareMetalKit NIC drivers (virtio-net
// or e1000, as the launcher attached them) and a host-side peer on a QEMU
// dgram/socket backend (integration tests, NetworkTests.swift). No stack:
//   - an ARP request for the guest's address (-W tag,inet,static,ADDR/P)
//     gets an ARP reply;
//   - a test frame (EtherType 0x88B5, 2-byte size N, then pattern(N, 0)) is
//     checked byte for byte and answered with a frame of the same size built
//     by the guest (EtherType 0x88B6, pattern(N, 1)), which the host checks;
//   - a test frame with size 0 ends the run: the guest prints its counts and
//     exits with the number of bad frames (0 when every frame was intact).
import BareMetalKit
import DeviceInterfaces
import Rumprun

/// Byte `index` of a test frame of `size` bytes sent in `direction`
/// (0 host→guest, 1 guest→host), for indices from 16 on.
@inline(__always) func pattern(_ index: Int, size: Int, direction: Int) -> UInt8 {
    UInt8(truncatingIfNeeded: index &* 31 &+ size &* 7 &+ direction &* 101)
}

/// Dotted quad to bytes; nil when malformed.
func parseIPv4(_ text: String) -> (UInt8, UInt8, UInt8, UInt8)? {
    var parts: [Int] = []
    var value = -1
    for byte in text.utf8 {
        if byte == 46 {
            guard value >= 0 else { return nil }
            parts.append(value)
            value = -1
        } else if byte >= 48 && byte <= 57 {
            value = (value < 0 ? 0 : value) * 10 + Int(byte - 48)
            if value > 255 { return nil }
        } else {
            return nil
        }
    }
    guard value >= 0 else { return nil }
    parts.append(value)
    guard parts.count == 4 else { return nil }
    return (UInt8(parts[0]), UInt8(parts[1]), UInt8(parts[2]), UInt8(parts[3]))
}

guard var nic = NetworkDevice.probeConfigured() else {
    print("frames: no usable NIC (run with --machine pc -I net0,virtio-net|e1000,...)")
    Rumprun.exit(1)
}
var address: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
if let interface = Rumprun.networkInterfaces.first, case let .staticAddress(text, _, _) = interface.addressing,
    let parsed = parseIPv4(text)
{
    address = parsed
}
let mac = nic.macAddress.bytes
print("frames: \(nic.driverName) driver, address \(address.0).\(address.1).\(address.2).\(address.3)")

var intact = 0
var bad = 0
var duplicates = 0
var arpReplies = 0
var lastSize = -1
var done = false
let outgoing = UnsafeMutableRawBufferPointer.allocate(byteCount: 1514, alignment: 16)

/// Sends `count` bytes of `outgoing`, retrying while the ring is full.
func transmit(_ count: Int) {
    var attempts = 0
    while true {
        do throws(NetworkInterfaceError) {
            try nic.send(frame: UnsafeRawBufferPointer(rebasing: outgoing[0..<count]))
            return
        } catch {
            attempts += 1
            if attempts > 1_000_000 {
                print("frames: cannot transmit a \(count)-byte frame")
                bad += 1
                return
            }
            _ = try? nic.receive(limit: 0) { _ in }
        }
    }
}

/// Handles one received frame: builds the answer in `outgoing` and returns
/// its length (0: no answer).
func handle(_ frame: UnsafeRawBufferPointer) -> Int {
    guard frame.count >= 14 else { return 0 }
    let type = Int(frame[12]) << 8 | Int(frame[13])
    if type == 0x0806 {
        // ARP (RFC 826) request, Ethernet/IPv4, for our address.
        guard frame.count >= 42, frame[14] == 0, frame[15] == 1, frame[16] == 8, frame[17] == 0, frame[21] == 1,
            frame[38] == address.0, frame[39] == address.1, frame[40] == address.2, frame[41] == address.3
        else { return 0 }
        for index in 0..<60 { outgoing[index] = 0 }
        for index in 0..<6 {
            outgoing[index] = frame[6 + index]  // to the requester
            outgoing[22 + index] = frame[22 + index]  // target hardware address
        }
        let m = [mac.0, mac.1, mac.2, mac.3, mac.4, mac.5]
        for index in 0..<6 {
            outgoing[6 + index] = m[index]
            outgoing[22 + index] = m[index]  // sender hardware address: ours
            outgoing[32 + index] = frame[22 + index]  // target: the requester
        }
        outgoing[12] = 0x08; outgoing[13] = 0x06
        outgoing[14] = 0; outgoing[15] = 1; outgoing[16] = 8; outgoing[17] = 0; outgoing[18] = 6; outgoing[19] = 4
        outgoing[20] = 0; outgoing[21] = 2
        outgoing[28] = address.0; outgoing[29] = address.1; outgoing[30] = address.2; outgoing[31] = address.3
        for index in 0..<4 { outgoing[38 + index] = frame[28 + index] }
        arpReplies += 1
        return 60
    }
    guard type == 0x88B5, frame.count >= 16 else { return 0 }
    let size = Int(frame[14]) << 8 | Int(frame[15])
    if size == 0 {
        done = true
        return 0
    }
    var good = size == frame.count
    if good {
        for index in 16..<size where frame[index] != pattern(index, size: size, direction: 0) {
            good = false
            break
        }
    }
    guard good else {
        print("frames: bad test frame: \(frame.count) bytes, header says \(size)")
        bad += 1
        return 0
    }
    // The host retransmits when an answer is lost: count each size once.
    if size == lastSize { duplicates += 1 } else { intact += 1 }
    lastSize = size
    for index in 0..<6 {
        outgoing[index] = frame[6 + index]
        outgoing[6 + index] = frame[index]
    }
    outgoing[12] = 0x88; outgoing[13] = 0xB6
    outgoing[14] = UInt8(size >> 8); outgoing[15] = UInt8(size & 0xFF)
    for index in 16..<size { outgoing[index] = pattern(index, size: size, direction: 1) }
    return size
}

while !done {
    // One frame at a time: the answer goes out after the driver has the
    // receive buffer back (no send from inside the receive callback).
    var answer = 0
    do throws(NetworkInterfaceError) {
        _ = try nic.receive(limit: 1) { frame in answer = handle(frame) }
    } catch {
        print("frames: receive failed")
        bad += 1
        break
    }
    if answer > 0 { transmit(answer) }
}
print("frames: \(intact) sizes intact, \(duplicates) repeated, \(bad) bad, \(arpReplies) ARP replies")
let s = nic.statistics
print("frames: driver counted \(s.framesReceived) received, \(s.framesSent) sent, \(s.receiveErrors) receive errors")
nic.shutdown()
Rumprun.exit(Int32(min(bad, 100)))
