/* netbench: the Linux-guest side of the drivers benchmark's frame figures.
 * Speaks the protocol of Benchmarks/drivers/guest/main.swift (EtherType
 * 0x88B5, commands from Benchmarks/drivers/peer.py) through an AF_PACKET
 * socket on one interface, so the same host peer measures Linux's driver
 * (virtio-net or e1000) and network core under the same QEMU configuration.
 * Built statically by Benchmarks/drivers/run.sh into the Linux guest's
 * initramfs.
 *
 *   netbench IFNAME
 *
 * Exits 0 on the peer's quit command. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}

static int fd;
static struct sockaddr_ll device;
static unsigned char own[6], peer[6], out[1514];

static void header(unsigned char command) {
    memcpy(out, peer, 6);
    memcpy(out + 6, own, 6);
    out[12] = 0x88; out[13] = 0xB5; out[14] = command;
}

static int transmit(int length) {
    return sendto(fd, out, (size_t)length, 0, (struct sockaddr *)&device, sizeof device) == length;
}

static void control(int length) {
    for (int i = 0; i < 1000 && !transmit(length); i++) usleep(100);
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "eth0";
    fd = socket(AF_PACKET, SOCK_RAW, htons(0x88B5));
    if (fd < 0) { perror("netbench: socket"); return 1; }
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFINDEX, &request) != 0) { perror("netbench: SIOCGIFINDEX"); return 1; }
    int index = request.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &request) != 0) { perror("netbench: SIOCGIFHWADDR"); return 1; }
    memcpy(own, request.ifr_hwaddr.sa_data, 6);
    memset(&device, 0, sizeof device);
    device.sll_family = AF_PACKET;
    device.sll_protocol = htons(0x88B5);
    device.sll_ifindex = index;
    device.sll_halen = 6;
    if (bind(fd, (struct sockaddr *)&device, sizeof device) != 0) { perror("netbench: bind"); return 1; }
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    printf("netbench: %s ready\n", name);
    fflush(stdout);

    unsigned char frame[2048];
    int receiving = 0, expected = 0, last_test = -1;
    uint64_t frames = 0, wrong = 0, retries = 0, span = 0, first = 0, last = 0;
    for (;;) {
        ssize_t n = recv(fd, frame, sizeof frame, 0);
        if (n < 15 || frame[12] != 0x88 || frame[13] != 0xB5) continue;
        unsigned char command = frame[14];
        if (command == 0x10) {
            if (!receiving) continue;
            uint64_t t = now_ns();
            if (frames == 0 && wrong == 0) first = t;
            last = t;
            if (n == expected) frames++; else wrong++;
            continue;
        }
        memcpy(peer, frame + 6, 6);
        int requested = n >= 21 ? frame[15] << 8 | frame[16] : 0;
        uint64_t milliseconds = n >= 21 ? (uint64_t)frame[17] << 24 | frame[18] << 16 | frame[19] << 8 | frame[20] : 0;
        /* Commands 2 and 3 carry a test number: a repeat is answered, not re-run. */
        int test = n >= 23 ? frame[21] << 8 | frame[22] : -1;
        if (command == 2 || command == 3) {
            if (test == last_test) { header(0x82); control(60); continue; }
            last_test = test;
        }
        switch (command) {
        case 1:
            header(0x81); control(60);
            break;
        case 2: {
            receiving = 0;
            int length = requested < 60 ? 60 : requested > 1514 ? 1514 : requested;
            header(0x82); control(60);
            for (int i = 19; i < length; i++) out[i] = (unsigned char)i;
            header(0x10);
            uint64_t sent = 0, full = 0, start = now_ns(), t = start;
            while (t - start < milliseconds * 1000000ULL) {
                out[15] = (unsigned char)(sent >> 24); out[16] = (unsigned char)(sent >> 16);
                out[17] = (unsigned char)(sent >> 8); out[18] = (unsigned char)sent;
                if (transmit(length)) sent++; else full++;
                t = now_ns();
            }
            frames = sent; span = t - start; wrong = 0; retries = full;
            printf("netbench: transmit %d B: %llu frames in %llu us, %llu refused\n", length, (unsigned long long)sent,
                   (unsigned long long)(span / 1000), (unsigned long long)full);
            fflush(stdout);
            break;
        }
        case 3:
            receiving = 1; expected = requested; frames = wrong = retries = 0; first = last = 0;
            header(0x82); control(60);
            break;
        case 4:
            if (receiving) {
                span = last - first;
                receiving = 0;
                printf("netbench: receive %d B: %llu frames in %llu us, %llu of another size\n", expected,
                       (unsigned long long)frames, (unsigned long long)(span / 1000), (unsigned long long)wrong);
                fflush(stdout);
            }
            header(0x84);
            put64(out + 15, frames); put64(out + 23, span); put64(out + 31, wrong); put64(out + 39, retries);
            control(60);
            break;
        case 5:
            return 0;
        }
    }
}
