#!/usr/bin/env python3
"""Shrinks a CUDA shared library for transport to a host with one known GPU architecture.

    scripts/strip-fatbin.py libonnxruntime_providers_cuda.so stripped.so 90   # H100 / H200
    xz -9 -T0 stripped.so                                                     # 271 MiB -> 52 MB

Zeroes the device code (cubins) of every architecture but the kept ones (compute capability as
`major*10 + minor`, comma-separated) inside the library's `.nv_fatbin` section. Every header stays,
so the CUDA runtime still parses each fat binary and picks the kept cubin; the zeroed payloads
compress to almost nothing. The result runs only on the kept architectures. Needs `objdump`.
"""
import struct
import subprocess
import sys

FATBIN_MAGIC = 0xBA55ED50


def fatbin_section(path):
    """(file offset, size) of the ELF's .nv_fatbin section."""
    headers = subprocess.run(["objdump", "-h", path], capture_output=True, text=True, check=True).stdout
    for line in headers.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == ".nv_fatbin":
            return int(fields[5], 16), int(fields[2], 16)
    raise SystemExit(f"{path}: no .nv_fatbin section")


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    path, out, keep = sys.argv[1], sys.argv[2], {int(a) for a in sys.argv[3].split(",")}
    offset, size = fatbin_section(path)
    data = bytearray(open(path, "rb").read())
    pos, end_section, kept, zeroed = offset, offset + size, 0, 0
    while pos + 16 <= end_section:
        # Fat binary header: magic, version, header size, size of the entries that follow.
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between fat binaries
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            # Entry header: kind, version, header size, padded payload size, …, architecture.
            _kind, _v, entry_header, padded, _a, _payload, _b, _c, arch = struct.unpack_from("<HHIIIIIII", data, entry)
            if arch in keep:
                kept += padded
            else:
                data[entry + entry_header : entry + entry_header + padded] = bytes(padded)
                zeroed += padded
            entry += entry_header + padded
        pos = end
    open(out, "wb").write(data)
    print(f"kept {kept / 1e6:.1f} MB of device code, zeroed {zeroed / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
