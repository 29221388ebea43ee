/* Constants and little-endian accessors of the page format specified in keyval/db/page.py.
 * Internal to csrc/db (the Python side has its own copy of the constants in that module; the
 * tests check that both codecs agree). */
#ifndef KEYVAL_DB_FORMAT_H
#define KEYVAL_DB_FORMAT_H

#include <stdint.h>
#include <string.h>

#define DB_HEADER_SIZE 32
#define DB_OFF_CHECKSUM 0
#define DB_OFF_ID 8
#define DB_OFF_TYPE 16
#define DB_OFF_COUNT 20
#define DB_OFF_OVERFLOW 24

#define DB_TYPE_BRANCH 2
#define DB_TYPE_LEAF 3

#define DB_LEAF_ELEMENT 7    /* flags u8, key length u16, value length u32 */
#define DB_BRANCH_ELEMENT 10 /* key length u16, child page id u64 */
#define DB_MAX_KEY (32 * 1024) /* MAX_KEY_SIZE of keyval/db/page.py */

#define DB_FLAG_VALUE 0
#define DB_FLAG_OVERFLOW 1
#define DB_FLAG_BUCKET 2
#define DB_OVERFLOW_REF 12 /* page id u64, value length u32 */

static inline uint16_t db_get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline uint32_t db_get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t db_get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void db_put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void db_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void db_put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

#endif
