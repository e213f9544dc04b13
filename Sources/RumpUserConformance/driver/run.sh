#!/usr/bin/env bash
# Links the C conformance harness against librumpuser the way a rump kernel
# would be linked, and runs it: against the shared library, against the
# static library, and (with tsan / asan) with both sides instrumented.
#
#   Sources/RumpUserConformance/driver/run.sh [plain|static|tsan|asan|all]
#
# Also checks that librumpuser.so exports every function that rumpuser.h
# and rumpuser_component.h declare. Scratch builds go to .build-rumpuser*
# (RUMPUSER_SCRATCH overrides). Prints "N passed, N failed" per run.
set -euo pipefail

root=$(cd "$(dirname "$0")/../../.." && pwd)
scratch=${RUMPUSER_SCRATCH:-$root/.build-rumpuser}
mode=${1:-all}
src=$root/Sources
headers="-I$src/CRumpUser/include -I$src/RumpUserConformance/include"
harness=("$src"/RumpUserConformance/*.c "$src"/RumpUserConformance/driver/main.c)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_product() { # scratch-path product [extra swift build flags...]
    local path=$1 product=$2
    shift 2
    (cd "$root" && swift build -c release --scratch-path "$path" --product "$product" "$@" >&2)
    echo "$path/release"
}

check_exports() { # lib.so
    local missing=0 symbols
    # Listed once: `nm | grep -q` under pipefail fails when grep stops early.
    symbols=$(nm -D --defined-only "$1")
    for name in $(grep -ohE '\brumpuser_[a-z_]+\(' "$src"/CRumpUser/include/rumpuser.h \
        "$src"/CRumpUser/include/rumpuser_component.h | tr -d '(' | sort -u); do
        if ! grep -qE " T $name\$" <<<"$symbols"; then
            echo "not exported: $name"
            missing=1
        fi
    done
    local count
    count=$(nm -D --defined-only "$1" | grep -cE ' T rumpuser_')
    echo "librumpuser.so exports $count rumpuser_* functions"
    return $missing
}

run_harness() { # label program
    echo "== $1"
    mkdir -p "$work/$1"
    "$2" "$work/$1"
}

plain() {
    local lib
    lib=$(build_product "$scratch" rumpuser)
    check_exports "$lib/librumpuser.so"
    clang -O2 -g -Wall -Wextra -Werror $headers "${harness[@]}" -L"$lib" -lrumpuser \
        -Wl,-rpath,"$lib" -rdynamic -lpthread -o "$work/conformance-shared"
    grep -q "librumpuser.so" <<<"$(ldd "$work/conformance-shared")" || { echo "not linked against librumpuser.so"; exit 1; }
    run_harness shared "$work/conformance-shared"
}

static() {
    local lib
    lib=$(build_product "$scratch" rumpuser-static)
    local objects=()
    for file in "${harness[@]}"; do
        clang -O2 -g -c $headers "$file" -o "$work/$(basename "$file" .c).o"
        objects+=("$work/$(basename "$file" .c).o")
    done
    # swiftc links the Swift runtime that the library's Swift code needs.
    swiftc -o "$work/conformance-static" "${objects[@]}" -L"$lib" -lrumpuser-static -lswiftGlibc \
        -Xlinker --export-dynamic
    run_harness static "$work/conformance-static"
}

sanitized() { # thread|address
    local kind=$1 lib flag
    lib=$(build_product "$scratch-$kind" rumpuser --sanitize="$kind")
    flag=$([ "$kind" = thread ] && echo -fsanitize=thread || echo -fsanitize=address)
    # The toolchain's sanitizer runtimes also intercept libdispatch.
    local swiftlib
    swiftlib=$(dirname "$(readlink -f "$(command -v swift)")")/../lib/swift/linux
    clang -O1 -g $flag -fno-omit-frame-pointer $headers "${harness[@]}" -L"$lib" -lrumpuser \
        -Wl,-rpath,"$lib" -L"$swiftlib" -ldispatch -lBlocksRuntime -Wl,-rpath,"$swiftlib" \
        -rdynamic -lpthread -o "$work/conformance-$kind"
    # Leak checking is off: the contract has the kernel keep what
    # dl_bootstrap hands it, and lwps of exited threads are the kernel's.
    # The Swift runtime's crash backtracer is off: the panic test aborts
    # a forked child, where it does not mix with the sanitizer runtimes.
    SWIFT_BACKTRACE=enable=no \
        TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
        ASAN_OPTIONS="detect_leaks=0 halt_on_error=1" \
        run_harness "$kind" "$work/conformance-$kind"
    if [ "$kind" = address ]; then
        # The syscall proxy suites alone, with leak checking on: every
        # client, frame and kernel process of the proxy must be freed.
        echo "== address, syscall proxy with leak checking"
        SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="detect_leaks=1 halt_on_error=1" \
            "$work/conformance-$kind" -sysproxy "$work/$kind"
    fi
}

case $mode in
plain) plain ;;
static) static ;;
tsan) sanitized thread ;;
asan) sanitized address ;;
all) plain; static; sanitized thread; sanitized address ;;
*) echo "usage: $0 [plain|static|tsan|asan|all]" >&2; exit 2 ;;
esac
