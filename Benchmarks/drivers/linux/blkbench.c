/* blkbench: the baseline of the drivers benchmark's virtio-blk figures.
 * Times 4 KiB sequential and random writes and reads, one request at a time
 * (pread/pwrite, queue depth 1), on a file or block device, each pattern for
 * a fixed time; writes end with an fsync whose time is included. Built
 * statically by Benchmarks/drivers/run.sh and run on the host (against the
 * disk image, with O_DIRECT and through the page cache) and inside the Linux
 * guest (against /dev/vda, with O_DIRECT), so both use the same code as the
 * unikernel's guest/main.swift uses the same patterns.
 *
 *   blkbench PATH SECONDS direct|buffered LABEL
 *
 * Prints "RESULT|LABEL|<pattern> <operation>|1|requests|IOPS|MiB/s" lines. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* xorshift64* as in the Swift guest. */
static uint64_t next_random(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PATH SECONDS direct|buffered LABEL\n", argv[0]);
        return 64;
    }
    const char *path = argv[1];
    double seconds = atof(argv[2]);
    int direct = strcmp(argv[3], "direct") == 0;
    const char *label = argv[4];
    int fd = open(path, O_RDWR | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        fprintf(stderr, "blkbench: %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct stat info;
    uint64_t bytes = 0;
    if (fstat(fd, &info) == 0 && S_ISBLK(info.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &bytes) != 0) bytes = 0;
    } else {
        bytes = (uint64_t)info.st_size;
    }
    uint64_t blocks = bytes / 4096;
    if (blocks == 0) {
        fprintf(stderr, "blkbench: %s: empty\n", path);
        return 1;
    }
    void *buffer;
    if (posix_memalign(&buffer, 4096, 4096) != 0) return 1;
    for (int i = 0; i < 4096; i++) ((unsigned char *)buffer)[i] = (unsigned char)(i * 13 + 7);

    static const struct { int write; int random; const char *name; } tests[] = {
        {1, 0, "sequential write"}, {1, 1, "random write"}, {0, 0, "sequential read"}, {0, 1, "random read"},
    };
    for (unsigned t = 0; t < sizeof tests / sizeof tests[0]; t++) {
        uint64_t state = 0x9E3779B97F4A7C15ULL + t, sequential = 0, done = 0;
        int failed = 0;
        double start = now(), elapsed = 0;
        do {
            for (int i = 0; i < 64; i++) {
                uint64_t block = tests[t].random ? next_random(&state) % blocks : sequential++ % blocks;
                ssize_t n = tests[t].write ? pwrite(fd, buffer, 4096, (off_t)(block * 4096))
                                           : pread(fd, buffer, 4096, (off_t)(block * 4096));
                if (n != 4096) failed++; else done++;
            }
            elapsed = now() - start;
        } while (elapsed < seconds && !failed);
        if (tests[t].write && fsync(fd) != 0) failed++;
        elapsed = now() - start;
        double iops = done / elapsed;
        printf("RESULT|%s|%s|1|%llu|%.0f|%.2f|%s\n", label, tests[t].name, (unsigned long long)done, iops,
               iops * 4096 / 1048576, failed ? "FAILED" : "");
        fflush(stdout);
    }
    close(fd);
    return 0;
}
