/* nbd-proto.h: every wire constant of the NBD protocol (doc/proto.md of
 * NetworkBlockDevice/nbd), in one place so no other file writes a magic number.
 * All integers on the wire are big-endian; the codec (codec.h) converts. */
#ifndef VHDNBD_NBD_PROTO_H
#define VHDNBD_NBD_PROTO_H

#include <stdint.h>

#define NBD_DEFAULT_PORT 10809

/* Handshake magics. */
#define NBD_MAGIC UINT64_C(0x4e42444d41474943)         /* "NBDMAGIC" */
#define NBD_OLD_VERSION UINT64_C(0x00420281861253)     /* oldstyle, not served */
#define NBD_NEW_VERSION UINT64_C(0x49484156454F5054)   /* "IHAVEOPT" */
#define NBD_OPT_REPLY_MAGIC UINT64_C(0x0003e889045565a9)

/* Handshake flags (server, u16). */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_NO_ZEROES (1u << 1)

/* Client flags (u32). */
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

/* Options. */
#define NBD_OPT_EXPORT_NAME 1u
#define NBD_OPT_ABORT 2u
#define NBD_OPT_LIST 3u
#define NBD_OPT_PEEK_EXPORT 4u /* withdrawn */
#define NBD_OPT_STARTTLS 5u
#define NBD_OPT_INFO 6u
#define NBD_OPT_GO 7u
#define NBD_OPT_STRUCTURED_REPLY 8u
#define NBD_OPT_LIST_META_CONTEXT 9u
#define NBD_OPT_SET_META_CONTEXT 10u
#define NBD_OPT_EXTENDED_HEADERS 11u

/* Option reply types. */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_FLAG_ERROR (1u << 31)
#define NBD_REP_ERR_UNSUP (NBD_REP_FLAG_ERROR | 1u)
#define NBD_REP_ERR_POLICY (NBD_REP_FLAG_ERROR | 2u)
#define NBD_REP_ERR_INVALID (NBD_REP_FLAG_ERROR | 3u)
#define NBD_REP_ERR_PLATFORM (NBD_REP_FLAG_ERROR | 4u)
#define NBD_REP_ERR_TLS_REQD (NBD_REP_FLAG_ERROR | 5u)
#define NBD_REP_ERR_UNKNOWN (NBD_REP_FLAG_ERROR | 6u)
#define NBD_REP_ERR_SHUTDOWN (NBD_REP_FLAG_ERROR | 7u)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8u)
#define NBD_REP_ERR_TOO_BIG (NBD_REP_FLAG_ERROR | 9u)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR | 10u)

/* Info types (NBD_OPT_INFO / NBD_OPT_GO). */
#define NBD_INFO_EXPORT 0u
#define NBD_INFO_NAME 1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE 3u

/* Transmission flags (u16). */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_RESIZE (1u << 9)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1u << 11)
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD (1u << 12)

/* Transmission magics. */
#define NBD_REQUEST_MAGIC UINT32_C(0x25609513)
#define NBD_EXTENDED_REQUEST_MAGIC UINT32_C(0x21e41c71)
#define NBD_SIMPLE_REPLY_MAGIC UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)
#define NBD_EXTENDED_REPLY_MAGIC UINT32_C(0x6e8a278c)

/* Commands. */
#define NBD_CMD_READ 0u
#define NBD_CMD_WRITE 1u
#define NBD_CMD_DISC 2u
#define NBD_CMD_FLUSH 3u
#define NBD_CMD_TRIM 4u
#define NBD_CMD_CACHE 5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u
#define NBD_CMD_RESIZE 8u

/* Command flags (u16). */
#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)

/* Structured reply chunk flags and types. */
#define NBD_REPLY_FLAG_DONE (1u << 0)
#define NBD_REPLY_TYPE_NONE 0u
#define NBD_REPLY_TYPE_OFFSET_DATA 1u
#define NBD_REPLY_TYPE_OFFSET_HOLE 2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6u
#define NBD_REPLY_TYPE_ERROR_BIT (1u << 15)
#define NBD_REPLY_TYPE_ERROR (NBD_REPLY_TYPE_ERROR_BIT | 1u)
#define NBD_REPLY_TYPE_ERROR_OFFSET (NBD_REPLY_TYPE_ERROR_BIT | 2u)

/* Transmission errors. */
#define NBD_SUCCESS 0u
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

/* Meta contexts: the standard one and its state bits. */
#define NBD_META_NS_BASE "base:"
#define NBD_CONTEXT_BASE_ALLOCATION "base:allocation"
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)
/* QEMU's context: each extent's value is the level of the backing chain that
 * holds it, 1 the image itself, 0 none (docs/interop/nbd.txt in QEMU). */
#define NBD_META_NS_QEMU "qemu:"
#define NBD_CONTEXT_QEMU_ALLOCATION_DEPTH "qemu:allocation-depth"

/* Sizes of the fixed wire structures. */
#define NBD_GREETING_SIZE 18u        /* NBDMAGIC, IHAVEOPT, handshake flags */
#define NBD_CLIENT_FLAGS_SIZE 4u
#define NBD_OPTION_HDR_SIZE 16u      /* IHAVEOPT, option, length */
#define NBD_OPTION_REPLY_HDR_SIZE 20u /* magic, option, type, length */
#define NBD_EXPORT_NAME_REPLY_SIZE 134u /* size, flags, 124 zeros */
#define NBD_EXPORT_NAME_REPLY_ZEROES 124u
#define NBD_REQUEST_SIZE 28u
#define NBD_EXTENDED_REQUEST_SIZE 32u /* magic, flags, type, cookie, offset, u64 length */
#define NBD_SIMPLE_REPLY_SIZE 16u
#define NBD_CHUNK_HDR_SIZE 20u
#define NBD_EXTENDED_REPLY_SIZE 32u   /* magic, flags, type, cookie, offset, u64 length */

/* Limits the spec sets. */
#define NBD_MAX_STRING 4096u              /* names, descriptions, queries, messages */
#define NBD_MAX_BLOCK_STATUS_DESCRIPTORS (1u << 20)

#endif
