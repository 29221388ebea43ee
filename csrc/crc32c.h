/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI, ext4 and etcd.
 *
 * kv_crc32c picks, once at first use, the SSE4.2 instruction when the CPU has it and a
 * portable slicing-by-8 table otherwise. Both give 0xE3069283 for "123456789".
 * crc is the running value: start with 0, feed the previous result to continue a stream. */
#ifndef KEYVAL_CRC32C_H
#define KEYVAL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

uint32_t kv_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t kv_crc32c_sw(uint32_t crc, const void *buf, size_t len);
/* Returns -1 (and computes nothing) when the CPU lacks SSE4.2. */
int64_t kv_crc32c_hw(uint32_t crc, const void *buf, size_t len);
/* 1 when kv_crc32c uses the hardware instruction. */
int kv_crc32c_hw_available(void);

#endif
