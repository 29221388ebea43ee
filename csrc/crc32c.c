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

/* The crc32 instruction takes 3 cycles but can start one per cycle, so one stream of it runs at
 * a third of its speed. Three streams over three adjacent blocks run at once and are joined:
 * a CRC register is linear, so the state after A|B|C is Z2(a) ^ Z1(b) ^ c, where a, b, c are
 * the states after each block (b and c started from 0) and Zk advances a state over k blocks of
 * zero bytes, four table lookups. Two block sizes: SHORT for records of ~100 bytes (a WAL
 * record's CRC covers 16 header bytes + payload), LONG for big ones. */
#define SHORT_BLOCK 32
#define LONG_BLOCK 256
static uint32_t zeros_short[2][4][256], zeros_long[2][4][256];

__attribute__((target("sse4.2"))) static uint32_t advance_over_zeros(uint32_t state, size_t n)
{
    uint64_t c = state;
    for (; n >= 8; n -= 8)
        c = __builtin_ia32_crc32di(c, 0);
    return (uint32_t)c;
}

static void build_zeros(uint32_t t[2][4][256], size_t block)
{
    for (int z = 0; z < 2; z++)
        for (int k = 0; k < 4; k++)
            for (uint32_t b = 0; b < 256; b++)
                t[z][k][b] = advance_over_zeros(b << (8 * k), block * (size_t)(2 - z));
}

static inline uint32_t zeros(const uint32_t t[4][256], uint32_t x)
{
    return t[0][x & 0xff] ^ t[1][(x >> 8) & 0xff] ^ t[2][(x >> 16) & 0xff] ^ t[3][x >> 24];
}

/* Three streams of `block` bytes from p, joined into c. */
#define CRC_3WAY(c, p, block, t)                                                                \
    do {                                                                                        \
        uint64_t c1 = 0, c2 = 0;                                                                \
        for (size_t i = 0; i < (block); i += 8) {                                               \
            uint64_t w0, w1, w2;                                                                \
            memcpy(&w0, (p) + i, 8);                                                            \
            memcpy(&w1, (p) + (block) + i, 8);                                                  \
            memcpy(&w2, (p) + 2 * (block) + i, 8);                                              \
            c = __builtin_ia32_crc32di(c, w0);                                                  \
            c1 = __builtin_ia32_crc32di(c1, w1);                                                \
            c2 = __builtin_ia32_crc32di(c2, w2);                                                \
        }                                                                                       \
        c = zeros((t)[0], (uint32_t)c) ^ zeros((t)[1], (uint32_t)c1) ^ (uint32_t)c2;            \
        (p) += 3 * (block);                                                                     \
    } while (0)

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *buf,
                                                                size_t len)
{
    /* No alignment prologue: unaligned loads cost nothing here, and a WAL record's CRC
     * starts 4 bytes into its 8-aligned header, so a prologue ran on every record. */
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    for (; len >= 3 * LONG_BLOCK; len -= 3 * LONG_BLOCK)
        CRC_3WAY(c, p, LONG_BLOCK, zeros_long);
    for (; len >= 3 * SHORT_BLOCK; len -= 3 * SHORT_BLOCK)
        CRC_3WAY(c, p, SHORT_BLOCK, zeros_short);
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

/* Once, before crc32c_sse42 is first used (idempotent: racing builders write equal values). */
static int hw_tables_ready;
static void build_hw_tables(void)
{
    if (__atomic_load_n(&hw_tables_ready, __ATOMIC_ACQUIRE))
        return;
    build_zeros(zeros_short, SHORT_BLOCK);
    build_zeros(zeros_long, LONG_BLOCK);
    __atomic_store_n(&hw_tables_ready, 1, __ATOMIC_RELEASE);
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
    if (kv_crc32c_hw_available()) {
        build_hw_tables();
        return crc32c_sse42(crc, buf, len);
    }
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
        if (kv_crc32c_hw_available()) {
            build_hw_tables();
            f = crc32c_sse42;
        }
#endif
        __atomic_store_n(&chosen, f, __ATOMIC_RELEASE);
    }
    return f(crc, buf, len);
}
