# Benchmarks/linux-guest.sh: sourced by the benchmarks that run a Linux guest
# as their baseline (http, drivers). Needs $scratch (the cache directory).

# fetch_debian_kernel FLAVOUR: the current Debian kernel package for
# linux-image-FLAVOUR, downloaded and unpacked once into $scratch. Sets
# kernel_package, kernel_dir and vmlinuz.
fetch_debian_kernel() {
    kernel_package=$(apt-cache depends "linux-image-$1" | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$kernel_package" ] || { echo "error: apt-cache knows no linux-image-$1 (apt-get update?)" >&2; exit 1; }
    kernel_dir="$scratch/$kernel_package"
    if [ ! -d "$kernel_dir" ]; then
        echo "==> downloading $kernel_package"
        (cd "$scratch" && apt-get download "$kernel_package" >/dev/null)
        dpkg-deb -x "$scratch"/"$kernel_package"_*.deb "$kernel_dir"
    fi
    vmlinuz=$(ls "$kernel_dir"/boot/vmlinuz-*)
}

# add_module NAME: copies kernel module NAME (decompressed) into
# $tree/lib/modules, after what its .modinfo "depends=" field names, and
# appends it to the array `order` (load order). Built-in modules are skipped.
add_module() {
    local name="$1" file dependency done_name
    for done_name in "${order[@]}"; do [ "$done_name" = "$name" ] && return 0; done
    file=$(find "$kernel_dir/lib/modules" -name "$name.ko*" | head -1)
    [ -n "$file" ] || return 0
    case "$file" in
        *.xz) xz -dc "$file" >"$tree/lib/modules/$name.ko" ;;
        *.zst) zstd -dqc "$file" >"$tree/lib/modules/$name.ko" ;;
        *) cp "$file" "$tree/lib/modules/$name.ko" ;;
    esac
    for dependency in $(grep -a -o 'depends=[a-z0-9_,-]*' "$tree/lib/modules/$name.ko" | head -1 | cut -d= -f2 | tr ',' ' '); do
        add_module "$dependency"
    done
    order+=("$name")
}
