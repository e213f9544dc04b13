#!/usr/bin/env python3
# extract-tables.py MEMORY_DUMP OUT: finds the ACPI tables and the Intel MP table in a
# physical-memory dump (QEMU monitor `pmemsave 0 SIZE FILE`) and writes them as
# a sparse-memory fixture:
#   "BMKMEM01", u64 rsdp_address (0: none),
#   then records: u64 address, u32 length, bytes[length] (little-endian).
import struct, sys

mem = open(sys.argv[1], "rb").read()
chunks = {}

def add(address, length):
    chunks[address] = mem[address:address + length]

def checksum_ok(address, length):
    return sum(mem[address:address + length]) & 0xFF == 0

rsdp = 0
for address in range(0, len(mem) - 36):
    if mem[address:address + 8] == b"RSD PTR " and checksum_ok(address, 20):
        rsdp = address
        break
if rsdp:
    revision = mem[rsdp + 15]
    add(rsdp, 36 if revision >= 2 else 20)
    tables = []
    rsdt = struct.unpack_from("<I", mem, rsdp + 16)[0]
    if rsdt:
        tables.append(rsdt)
    if revision >= 2:
        xsdt = struct.unpack_from("<Q", mem, rsdp + 24)[0]
        if xsdt:
            tables.append(xsdt)
    for root in list(tables):
        signature = mem[root:root + 4]
        length = struct.unpack_from("<I", mem, root + 4)[0]
        width = 8 if signature == b"XSDT" else 4
        for offset in range(36, length, width):
            entry = int.from_bytes(mem[root + offset:root + offset + width], "little")
            tables.append(entry)
    for table in tables:
        length = struct.unpack_from("<I", mem, table + 4)[0]
        add(table, length)
        print("table", mem[table:table + 4], hex(table), length, file=sys.stderr)
# BIOS data area word with the EBDA segment.
add(0x40E, 2)
for start, end in ((0x9FC00, 0xA0000), (0xF0000, 0x100000)):
    for address in range(start, end, 16):
        if mem[address:address + 4] == b"_MP_" and checksum_ok(address, 16):
            add(address, 16)
            config = struct.unpack_from("<I", mem, address + 4)[0]
            if config:
                base = struct.unpack_from("<H", mem, config + 4)[0]
                extended = struct.unpack_from("<H", mem, config + 40)[0]
                add(config, base + extended)
                print("MP", hex(address), hex(config), base, extended, file=sys.stderr)
            break
with open(sys.argv[2], "wb") as out:
    out.write(b"BMKMEM01" + struct.pack("<Q", rsdp))
    for address in sorted(chunks):
        out.write(struct.pack("<QI", address, len(chunks[address])) + chunks[address])
print("rsdp", hex(rsdp), file=sys.stderr)
