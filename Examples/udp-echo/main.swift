// udp-echo: a UDP echo unikernel (RFC 862 on port 7). A BareMetalKit NIC
// driver (virtio-net or e1000, as the launcher attached it) feeds NetStack in
// a single-threaded poll loop; the address is static or DHCP from the
// launcher (-W). Every datagram goes back to its sender unchanged; the
// datagram "quit" ends the guest with status 0 after it is echoed.
//   rumprun-cli run qemu -i --machine pc \
//     -I net0,virtio-net,user,hostfwd=udp:127.0.0.1:7777-:7 -W net0,inet,dhcp udp-echo.img
// Bring-up (clock, NIC, address) is in GuestNetwork.swift; the NIC is Rumprun.NetworkDevice.
import BareMetalKit
import DeviceInterfaces
import NetStack
import Rumprun

guard let clock = GuestClock() else { fail("udp-echo", "the platform clock is not calibrated") }
let (stack, interface) = startNetwork("udp-echo", clock: clock)

let socket: SocketHandle
do { socket = try stack.bindUDP(port: 7) } catch { fail("udp-echo", "cannot bind UDP port 7") }
print("udp-echo: listening on UDP port 7")

let quit: [UInt8] = Array("quit".utf8)
var echoed = 0
var bytesEchoed = 0
while true {
    stack.poll(now: clock.now())
    while let datagram = try? stack.receive(socket) {
        do {
            try stack.send(socket, to: datagram.source, datagram.payload)
        } catch {
            print("udp-echo: cannot answer \(datagram.source.address.description):\(datagram.source.port)")
            continue
        }
        echoed += 1
        bytesEchoed += datagram.payload.count
        if datagram.payload == quit {
            // Let the echo (and any ARP it needs) leave before the machine stops.
            let drain = clock.now() + 200_000_000
            while clock.now() < drain { stack.poll(now: clock.now()) }
            let s = stack.statistics
            print("udp-echo: echoed \(echoed) datagrams, \(bytesEchoed) bytes, checksum errors \(s.checksumErrors), exiting")
            stack.device(interface).shutdown()
            Rumprun.exit(0)
        }
    }
}
