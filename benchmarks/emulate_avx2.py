"""Run a benchmark as on an AVX2-only CPU: CPUID itself says AVX2, so every library dispatches
to its AVX2 kernels (torch, oneDNN, MKL, ONNX Runtime's MLAS, FAISS, numpy), not only those
that `ONEDNN_MAX_CPU_ISA` caps.

    uv run python benchmarks/emulate_avx2.py benchmarks/bench_index.py --count 300

Linux on x86-64 with CPUID faulting (`cpuid_fault` in /proc/cpuinfo) and a C compiler:
`avx2only.c` is built once into ~/.cache and preloaded; it has the kernel fault on CPUID and
answers with AVX-512, AVX-VNNI, AVX10 and AMX cleared. It is still this CPU's cores, caches and
clock: an emulation of the instruction sets, not of an AVX2 machine's speed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("avx2only.c")
CACHE = Path.home() / ".cache" / "pixsearch-bench"
# glibc picks its string functions before the preload can answer CPUID: cap those too.
GLIBC_CAPS = "glibc.cpu.hwcaps=-AVX512F,-AVX512DQ,-AVX512CD,-AVX512BW,-AVX512VL"


def library() -> Path:
    """The preload library, built from `avx2only.c` unless already built from this source."""
    code = SOURCE.read_bytes()
    out = CACHE / f"avx2only-{hashlib.sha256(code).hexdigest()[:12]}.so"
    if not out.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("emulate_avx2: no C compiler (cc) found")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"]
        subprocess.run(cmd, check=True)
        tmp.replace(out)
    return out


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    try:
        fault = "cpuid_fault" in Path("/proc/cpuinfo").read_text()
    except OSError:
        fault = False
    if not fault:
        raise SystemExit("emulate_avx2: this CPU or kernel has no CPUID faulting (Linux, x86-64)")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library()), env.get("LD_PRELOAD", "")]))
    env["GLIBC_TUNABLES"] = GLIBC_CAPS
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # pixsearch reads /proc/cpuinfo, which CPUID does not change
    env["PIXSEARCH_BENCH_CPUID"] = "avx2"
    os.execve(sys.executable, [sys.executable, *sys.argv[1:]], env)


if __name__ == "__main__":
    main()
