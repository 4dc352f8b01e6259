#!/usr/bin/env python3
"""fatbin-archs.py OBJ...: the SASS and PTX architectures embedded in each
object's .nv_fatbin section (what the GPU will load).  Run by
tools/gpu-verify.sh."""
import os, struct, subprocess, sys, tempfile
for path in sys.argv[1:]:
    tmp = os.path.join(tempfile.gettempdir(), "gv-%d-%s.fatbin" % (os.getpid(), os.path.basename(path)))
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.nv_fatbin", path, tmp], check=False)
    try:
        data = open(tmp, "rb").read()
    except OSError:
        print(path, "no .nv_fatbin"); continue
    res, off = [], 0
    while off + 16 <= len(data):
        magic, ver, hsize, fsize = struct.unpack_from("<IHHQ", data, off)
        if magic != 0xBA55ED50:
            off += 8; continue
        p, end = off + hsize, off + hsize + fsize
        while p + 32 <= end:
            kind, ever, ehs, esz = struct.unpack_from("<HHIQ", data, p)
            arch = struct.unpack_from("<I", data, p + 28)[0]
            res.append({1: "PTX", 2: "SASS"}.get(kind, str(kind)) + "/sm_%d" % arch)
            p += ehs + esz
        off = end
    os.unlink(tmp)
    print("%-45s %s" % (path, " ".join(res)))
