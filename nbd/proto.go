package nbd

import (
	"strings"
	"unicode/utf8"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants of the NBD protocol (doc/proto.md of
// github.com/NetworkBlockDevice/nbd). Values that pkg/protocol of go-nbd
// defines are taken from there; the rest are spelled out here with the name
// the spec gives them.

// Magic numbers.
const (
	magicNBD             = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC" (INIT_PASSWD)
	magicOption          = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptionReply     = protocol.NEGOTIATION_MAGIC_REPLY    // 0x3e889045565a9
	magicRequest         = protocol.TRANSMISSION_MAGIC_REQUEST // NBD_REQUEST_MAGIC
	magicSimpleReply     = protocol.TRANSMISSION_MAGIC_REPLY   // NBD_SIMPLE_REPLY_MAGIC
	magicStructuredReply = uint32(0x668e33ef)                  // NBD_STRUCTURED_REPLY_MAGIC
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)                                     // NBD_FLAG_NO_ZEROES

	clientFlagFixedNewstyle = uint32(1 << 0) // NBD_FLAG_C_FIXED_NEWSTYLE
	clientFlagNoZeroes      = uint32(1 << 1) // NBD_FLAG_C_NO_ZEROES
)

// Option types.
const (
	optExportName      = uint32(1) // NBD_OPT_EXPORT_NAME
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5) // NBD_OPT_STARTTLS
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)  // NBD_OPT_STRUCTURED_REPLY
	optListMetaContext = uint32(9)  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaContext  = uint32(10) // NBD_OPT_SET_META_CONTEXT
)

// Option reply types.
const (
	repAck           = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer        = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo          = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext   = uint32(4) // NBD_REP_META_CONTEXT
	repErrUnsup      = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy     = uint32(2 | 1<<31) // NBD_REP_ERR_POLICY
	repErrInvalid    = uint32(3 | 1<<31) // NBD_REP_ERR_INVALID
	repErrTLSReqd    = uint32(5 | 1<<31) // NBD_REP_ERR_TLS_REQD
	repErrUnknown    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown   = uint32(7 | 1<<31) // NBD_REP_ERR_SHUTDOWN
	repErrTooBig     = uint32(9 | 1<<31) // NBD_REP_ERR_TOO_BIG
	repErrBitmask    = uint32(1 << 31)
	maxOptionMessage = 4096 // strings MUST be no longer than 4096 bytes
)

// NBD_INFO_* information types.
const (
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags.
const (
	tflagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS // NBD_FLAG_HAS_FLAGS
	tflagReadOnly        = uint16(1 << 1)                             // NBD_FLAG_READ_ONLY
	tflagSendFlush       = uint16(1 << 2)                             // NBD_FLAG_SEND_FLUSH
	tflagSendFUA         = uint16(1 << 3)                             // NBD_FLAG_SEND_FUA
	tflagSendTrim        = uint16(1 << 5)                             // NBD_FLAG_SEND_TRIM
	tflagSendWriteZeroes = uint16(1 << 6)                             // NBD_FLAG_SEND_WRITE_ZEROES
	tflagSendDF          = uint16(1 << 7)                             // NBD_FLAG_SEND_DF
	tflagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tflagSendFastZero    = uint16(1 << 11) // NBD_FLAG_SEND_FAST_ZERO
)

// Command types.
const (
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3) // NBD_CMD_FLUSH
	cmdTrim        = uint16(4) // NBD_CMD_TRIM
	cmdCache       = uint16(5) // NBD_CMD_CACHE (accepted as a no-op, not advertised)
	cmdWriteZeroes = uint16(6) // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus = uint16(7) // NBD_CMD_BLOCK_STATUS
)

// Command flags.
const (
	cmdFlagFUA      = uint16(1 << 0) // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   = uint16(1 << 1) // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       = uint16(1 << 2) // NBD_CMD_FLAG_DF
	cmdFlagReqOne   = uint16(1 << 3) // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero = uint16(1 << 4) // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and types.
const (
	replyFlagDone        = uint16(1 << 0)    // NBD_REPLY_FLAG_DONE
	replyTypeNone        = uint16(0)         // NBD_REPLY_TYPE_NONE
	replyTypeOffsetData  = uint16(1)         // NBD_REPLY_TYPE_OFFSET_DATA
	replyTypeBlockStatus = uint16(5)         // NBD_REPLY_TYPE_BLOCK_STATUS
	replyTypeError       = uint16(1<<15 + 1) // NBD_REPLY_TYPE_ERROR
)

// Error values carried in replies ("Error values").
const (
	errnoPerm     = protocol.TRANSMISSION_ERROR_EPERM  // NBD_EPERM
	errnoIO       = uint32(5)                          // NBD_EIO
	errnoInval    = protocol.TRANSMISSION_ERROR_EINVAL // NBD_EINVAL
	errnoNoSpace  = uint32(28)                         // NBD_ENOSPC
	errnoNotSup   = uint32(95)                         // NBD_ENOTSUP
	errnoShutdown = uint32(108)                        // NBD_ESHUTDOWN
)

// base:allocation status flags.
const (
	stateHole = uint32(1 << 0) // NBD_STATE_HOLE
	stateZero = uint32(1 << 1) // NBD_STATE_ZERO
)

// Sizes of fixed-length messages.
const (
	requestHeaderLen    = 28 // magic, flags, type, handle, offset, length
	simpleReplyLen      = 16 // magic, error, handle
	structuredHeaderLen = 20 // magic, flags, type, handle, length
)

// metaContextBaseAllocation is the only metadata context we serve; its ID
// in NBD_REP_META_CONTEXT replies to NBD_OPT_SET_META_CONTEXT.
const (
	metaContextBaseAllocation = "base:allocation"
	metaContextIDAllocation   = uint32(1)
)

// validString reports whether s satisfies the spec's rules for strings:
// UTF-8, no NUL, at most 4096 bytes.
func validString(s string) bool {
	return len(s) <= maxOptionMessage && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// sanitizeMessage turns an arbitrary error text into a string the spec
// allows on the wire: valid UTF-8 without NUL, at most max bytes, cut at a
// rune boundary.
func sanitizeMessage(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// optName names an option type for logs.
func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	}
	return "unknown"
}

// cmdName names a command type for logs.
func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return "unknown"
}
