// libc.c: the few C library functions the Embedded Swift runtime and clang's
// code generation expect from a freestanding platform (guest world only).
// Heap functions (posix_memalign, free, ...) and putchar live in Swift.
#include <stddef.h>
#include <stdint.h>
#include "CPUPrimitives.h"

// The string moves use the x86 string instructions: eight bytes per step
// with MOVSQ/STOSQ, then the tail with MOVSB/STOSB. Under KVM the CPU runs
// them at cache speed (ERMSB); under QEMU's TCG each step is one emulated
// instruction, eight times fewer than a byte loop. The direction flag is
// clear here (the ABI requires it at every call, and the entry and interrupt
// paths clear it).
void *memset(void *destination, int value, size_t count) {
    void *d = destination;
    uint64_t pattern = (uint8_t)value * 0x0101010101010101ull;
    size_t words = count >> 3, bytes = count & 7;
    __asm__ volatile("rep stosq" : "+D"(d), "+c"(words) : "a"(pattern) : "memory");
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(bytes) : "a"(pattern) : "memory");
    return destination;
}

void *memcpy(void *restrict destination, const void *restrict source, size_t count) {
    void *d = destination;
    const void *s = source;
    size_t words = count >> 3, bytes = count & 7;
    __asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(words) : : "memory");
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(bytes) : : "memory");
    return destination;
}

typedef uint64_t __attribute__((may_alias, aligned(1))) unaligned_word;

void *memmove(void *destination, const void *source, size_t count) {
    unsigned char *d = destination;
    const unsigned char *s = source;
    if (d == s || count == 0) return destination;
    if (d < s || d >= s + count) return memcpy(destination, source, count);
    // Overlapping with the destination above the source: copy from the end,
    // a word at a time, then the leading bytes.
    d += count;
    s += count;
    while (count >= 8) {
        d -= 8;
        s -= 8;
        *(unaligned_word *)d = *(const unaligned_word *)s;
        count -= 8;
    }
    while (count--) *--d = *--s;
    return destination;
}

int memcmp(const void *left, const void *right, size_t count) {
    const unsigned char *l = left, *r = right;
    for (; count; count--, l++, r++) {
        if (*l != *r) return *l < *r ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *string) {
    size_t length = 0;
    while (string[length]) length++;
    return length;
}

// Stack protector: entry.S replaces this guard with a boot-time random value.
uintptr_t __stack_chk_guard = 0x595e9fbd94fda766ULL;
extern void bmk_stack_smashed(void) __attribute__((noreturn));
void __stack_chk_fail(void) { bmk_stack_smashed(); }


extern uint64_t bmk_boot_tsc;
uint64_t bmk_boot_timestamp(void) { return bmk_boot_tsc; }

// The heap is Swift's (BareMetalKit HeapAllocator); these are its C faces.
extern void *bmk_heap_allocate(size_t size, size_t alignment);
extern void bmk_heap_free(void *pointer);
extern size_t bmk_heap_usable_size(void *pointer);

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return 22; /* EINVAL */
    void *pointer = bmk_heap_allocate(size, alignment);
    if (!pointer) return 12; /* ENOMEM */
    *result = pointer;
    return 0;
}

void *malloc(size_t size) { return bmk_heap_allocate(size, 16); }

void *aligned_alloc(size_t alignment, size_t size) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) return NULL;
    return bmk_heap_allocate(size, alignment);
}

void *calloc(size_t count, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) return NULL;
    void *pointer = bmk_heap_allocate(total, 16);
    if (pointer) memset(pointer, 0, total);
    return pointer;
}

void *realloc(void *pointer, size_t size) {
    if (!pointer) return malloc(size);
    size_t old = bmk_heap_usable_size(pointer);
    if (size <= old) return pointer;
    void *fresh = malloc(size);
    if (!fresh) return NULL;
    memcpy(fresh, pointer, old);
    bmk_heap_free(pointer);
    return fresh;
}

void free(void *pointer) { bmk_heap_free(pointer); }

// The interrupt descriptor table: 256 gates of 16 bytes (BareMetalKit fills it).
static uint8_t bmk_idt[256 * 16] __attribute__((aligned(16)));
uintptr_t bmk_idt_address(void) { return (uintptr_t)bmk_idt; }

extern int main(int argc, char **argv);
int bmk_call_main(void) { return main(0, NULL); }

// Rounding for code that computes with doubles (timer arithmetic): exact
// for every double; values of 2^52 and above are already whole numbers.
double ceil(double x) {
    if (!(x == x) || x >= 4503599627370496.0 || x <= -4503599627370496.0) return x;
    double whole = (double)(long long)x;
    return whole < x ? whole + 1.0 : whole;
}

double floor(double x) {
    if (!(x == x) || x >= 4503599627370496.0 || x <= -4503599627370496.0) return x;
    double whole = (double)(long long)x;
    return whole > x ? whole - 1.0 : whole;
}
