/* Human sizes: "10G", "512", "1.5M" are not accepted (integers only). */
#ifndef VHDNBD_SIZE_H
#define VHDNBD_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses a size with an optional K/M/G/T (powers of 1024, also KiB/k/...) suffix.
 * Returns 0, -EINVAL for garbage, -ERANGE on overflow. */
int size_parse(const char *s, uint64_t *out);
/* Formats bytes as e.g. "2 GiB" or "1.5 MiB" into buf. */
const char *size_format(uint64_t bytes, char *buf, size_t len);

#endif
