/* CRC32C: hardware (SSE4.2 crc32 instruction) or slicing-by-8, chosen at run time. */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static int table_ready;

static void build_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = table[0][n];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[t][n] = c;
        }
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t kv_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE))
        build_table(); /* idempotent: racing builders write identical values */
    const unsigned char *p = buf;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc; /* little-endian hosts only; the build refuses big-endian ones */
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^
              table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_HW 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *buf,
                                                                size_t len)
{
    /* No alignment prologue: unaligned loads cost nothing here, and a WAL record's CRC
     * starts 4 bytes into its 8-aligned header, so a prologue ran on every record. */
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        c = __builtin_ia32_crc32si((uint32_t)c, w);
        p += 4;
        len -= 4;
    }
    while (len--)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

int kv_crc32c_hw_available(void)
{
#ifdef HAVE_X86_HW
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    return 0;
#endif
}

int64_t kv_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
#ifdef HAVE_X86_HW
    if (kv_crc32c_hw_available())
        return crc32c_sse42(crc, buf, len);
#endif
    (void)crc, (void)buf, (void)len;
    return -1;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn chosen;

uint32_t kv_crc32c(uint32_t crc, const void *buf, size_t len)
{
    crc_fn f = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (!f) {
        f = kv_crc32c_sw;
#ifdef HAVE_X86_HW
        if (kv_crc32c_hw_available())
            f = crc32c_sse42;
#endif
        __atomic_store_n(&chosen, f, __ATOMIC_RELEASE);
    }
    return f(crc, buf, len);
}
