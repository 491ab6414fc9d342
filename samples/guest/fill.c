/*
 * fill: guest-side workload for the miginspect sample generator.
 *
 * Built with `gcc -static -O2` and run as PID 1's child (or exec'd by /init)
 * inside a tiny busybox initramfs.  Steps:
 *   1. zero free memory: map and populate most of MemFree, then unmap it, so
 *      that boot leftovers (compressed kernel, initrd) do not bloat captures
 *      (the kernel clears pages it hands out; init_on_free=1 clears on free);
 *   2. fill FILL_MIB MiB with a recognisable per-page pattern;
 *   3. print "MIGINSPECT-READY ..." on the console;
 *   4. if WS_MIB > 0, rewrite the first WS_MIB MiB of the fill region
 *      forever, bumping the generation counter on every pass; otherwise sleep.
 *
 * Page pattern (4096 bytes = 256 identical 16-byte units, little-endian u32):
 *   unit[0] = 0x4D494731 ("1GIM" in memory: the magic)
 *   unit[1] = page index within the fill region (0-based)
 *   unit[2] = generation (0 after the initial fill, +1 per working-set pass)
 *   unit[3] = unit[1] * 0x9E3779B1 ^ unit[2] ^ 0xA5A5A5A5 (check word)
 * Each page is distinct (index, generation) yet compresses to a few bytes.
 *
 * Usage: fill FILL_MIB [WS_MIB [ZERO_RESERVE_MIB [WS_DELAY_S [UNLINK_PATH...]]]]
 * UNLINK_PATHs (e.g. /bin/busybox, no longer needed once /init has exec'd fill) are
 * removed from the initramfs first, so their page-cache pages are freed and zeroed too.
 * With WS_DELAY_S > 0 the working set starts that many (guest) seconds after
 * the READY marker, announced by "MIGINSPECT-WS-START" on the console.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define MAGIC 0x4D494731u

static long meminfo_kib(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static void fill_page(uint32_t *p, uint32_t index, uint32_t gen)
{
    uint32_t check = index * 0x9E3779B1u ^ gen ^ 0xA5A5A5A5u;
    for (unsigned i = 0; i < PAGE / 4; i += 4) {
        p[i] = MAGIC;
        p[i + 1] = index;
        p[i + 2] = gen;
        p[i + 3] = check;
    }
}

int main(int argc, char **argv)
{
    long fill_mib = argc > 1 ? atol(argv[1]) : 32;
    long ws_mib = argc > 2 ? atol(argv[2]) : 0;
    long reserve_mib = argc > 3 ? atol(argv[3]) : 12;
    long ws_delay = argc > 4 ? atol(argv[4]) : 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 5; i < argc; i++)
        unlink(argv[i]);

    /* 1. zero free memory */
    long free_kib = meminfo_kib("MemFree");
    long zero_bytes = free_kib * 1024L - reserve_mib * 1024L * 1024L;
    long zeroed_mib = 0;
    if (zero_bytes > 0) {
        void *z = mmap(NULL, zero_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_NORESERVE, -1, 0);
        if (z != MAP_FAILED) {
            /* touch every page in case MAP_POPULATE was partial */
            for (long off = 0; off < zero_bytes; off += PAGE)
                ((volatile char *)z)[off] = 0;
            munmap(z, zero_bytes);
            zeroed_mib = zero_bytes >> 20;
        }
    }

    /* 2. fill */
    size_t fill_bytes = (size_t)fill_mib << 20;
    uint32_t npages = (uint32_t)(fill_bytes / PAGE);
    uint8_t *buf = mmap(NULL, fill_bytes ? fill_bytes : PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        printf("MIGINSPECT-ERROR mmap fill %ld MiB failed\n", fill_mib);
        for (;;)
            pause();
    }
    for (uint32_t i = 0; i < npages; i++)
        fill_page((uint32_t *)(buf + (size_t)i * PAGE), i, 0);

    if (ws_mib > fill_mib)
        ws_mib = fill_mib;
    printf("MIGINSPECT-READY fill_mib=%ld ws_mib=%ld pages=%u magic=0x%08x zeroed_mib=%ld "
           "memfree_kib_before=%ld memfree_kib_after=%ld ws_delay_s=%ld\n",
           fill_mib, ws_mib, npages, MAGIC, zeroed_mib, free_kib, meminfo_kib("MemFree"),
           ws_delay);

    /* 4. working set */
    uint32_t ws_pages = (uint32_t)(((size_t)ws_mib << 20) / PAGE);
    if (ws_pages == 0) {
        for (;;)
            pause();
    }
    if (ws_delay > 0) {
        unsigned left = (unsigned)ws_delay;
        while (left)
            left = sleep(left);
        printf("MIGINSPECT-WS-START ws_mib=%ld\n", ws_mib);
    }
    for (uint32_t gen = 1;; gen++) {
        for (uint32_t i = 0; i < ws_pages; i++)
            fill_page((uint32_t *)(buf + (size_t)i * PAGE), i, gen);
    }
    return 0;
}
