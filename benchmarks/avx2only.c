/* LD_PRELOAD: make CPUID report an AVX2-only x86-64 CPU (no AVX-512, AVX-VNNI, AVX10, AMX),
 * by CPUID faulting (arch_prctl ARCH_SET_CPUID) and a SIGSEGV handler that runs the real
 * CPUID and clears those feature bits. Every library that asks CPUID (oneDNN, MKL, ONNX
 * Runtime's MLAS, FAISS, numpy) then dispatches to its AVX2 kernels. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <asm/prctl.h>
#include <dlfcn.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static int installed;

static struct sigaction previous;
static volatile unsigned long traps;  /* CPUIDs answered (AVX2ONLY_COUNT=1 prints it) */

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));                      /* AVX512 F DQ IFMA PF ER CD BW VL */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14)); /* VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));                                   /* 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 FP16 AMX-TILE AMX-INT8 */
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23)); /* AVX-VNNI AVX512-BF16 AMX-FP16 AVX-IFMA */
        r[3] &= ~((1u << 4) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 19)); /* VNNI-INT8 NE-CONVERT AMX-COMPLEX VNNI-INT16 AVX10 */
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0;                           /* AMX tiles, AVX10 */
    }
}

static void on_fault(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    /* A faulting CPUID is a general-protection fault (SI_KERNEL); only then is RIP readable
     * for sure (a jump to an unmapped address faults with SEGV_MAPERR). */
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        uint32_t r[4], leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        real_cpuid(leaf, sub, r);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        traps++;
        return;
    }
    /* Not ours: hand it on as if this handler were never there. */
    if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction) { previous.sa_sigaction(sig, info, ctx); return; }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) { previous.sa_handler(sig); return; }
    signal(sig, SIG_DFL);
}

__attribute__((constructor)) static void start(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    real_sigaction(SIGSEGV, &sa, &previous);
    installed = 1;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

__attribute__((destructor)) static void stop(void) { if (getenv("AVX2ONLY_COUNT")) fprintf(stderr, "cpuid traps: %lu\n", traps); }

/* Others' SIGSEGV handlers (Python's faulthandler, pytest's) are kept behind this one, which
 * hands them every fault that is not CPUID. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !installed) return real_sigaction(sig, act, old);
    if (old) *old = previous;
    if (act) previous = *act;
    return 0;
}
