"""Zero the device code for every GPU architecture but the kept ones inside an ELF's .nv_fatbin
section. Headers stay, so the CUDA runtime still parses every fat binary and picks the kept cubin;
the zeroed payloads compress to nothing for transport."""
import struct, subprocess, sys
path, out, keep = sys.argv[1], sys.argv[2], {int(a) for a in sys.argv[3].split(',')}
hdr = subprocess.run(['objdump', '-h', path], capture_output=True, text=True, check=True).stdout.split('\n')
for i, line in enumerate(hdr):
    f = line.split()
    if len(f) > 5 and f[1] == '.nv_fatbin':
        size, off = int(f[2], 16), int(f[5], 16)
data = bytearray(open(path, 'rb').read())
pos, end_sec, zeroed, kept = off, off + size, 0, 0
while pos + 16 <= end_sec:
    magic, ver, hsz, fsz = struct.unpack_from('<IHHQ', data, pos)
    if magic != 0xBA55ED50:
        pos += 8; continue
    e, end = pos + hsz, pos + hsz + fsz
    while e < end:
        kind, ev, ehs, padded, u0, psz, u1, u2, sm = struct.unpack_from('<HHIIIIIII', data, e)
        if sm in keep:
            kept += padded
        else:
            data[e + ehs:e + ehs + padded] = bytes(padded); zeroed += padded
        e += ehs + padded
    pos = end
open(out, 'wb').write(data)
print(f'kept {kept/1e6:.1f} MB of device code, zeroed {zeroed/1e6:.1f} MB')
