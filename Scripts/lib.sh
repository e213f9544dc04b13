# lib.sh: shared by the project's scripts: installs the system packages the
# project needs when they are missing (Debian; run as root on a fresh box).

ensure_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
    [ -f /usr/include/libelf.h ] && [ -f /usr/include/gelf.h ] || missing+=(libelf-dev)
    [ -f /usr/include/xen/xen.h ] || missing+=(libxen-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
            echo "error: ${missing[*]} missing; run as root or install them with apt-get" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v swift >/dev/null 2>&1; then
        if [ -x /opt/swift/usr/bin/swift ]; then
            export PATH="/opt/swift/usr/bin:$PATH"
        else
            echo "error: no Swift toolchain on PATH (Swift 6.3 needed, with Embedded Swift support)" >&2
            exit 1
        fi
    fi
}

# Builds every guest-world module for the guest triple (Embedded Swift).
build_guest_world() {
    echo "==> building the guest world (Embedded Swift, x86_64-unknown-none-elf)"
    GUEST=1 swift build --triple x86_64-unknown-none-elf -c release --scratch-path .build-guest \
        -Xswiftc -wmo -Xcc -ffreestanding -Xcc -mno-red-zone
}
