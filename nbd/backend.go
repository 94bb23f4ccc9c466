package nbd

import (
	"context"
	"errors"
	"syscall"
)

// Backend resolves export names to volumes. For sheepdog the export name is
// the VDI name; whether "name@snap" is served read-only is the backend's
// business.
type Backend interface {
	// Open attaches the named export for one client connection. The
	// server calls Close on the returned Volume exactly once, after the
	// last request on that connection has finished. Errors should wrap
	// ErrUnknownExport (no such export) or ErrBusy (attached elsewhere);
	// the error text is sent to the client in the option error reply.
	Open(ctx context.Context, name string) (Volume, error)
	// List returns the exports announced in reply to NBD_OPT_LIST.
	List(ctx context.Context) ([]Export, error)
}

// Export describes one export in an NBD_OPT_LIST reply.
type Export struct {
	Name        string
	Description string
}

// Volume is an attached export. All methods may be called concurrently.
// Offsets and lengths are validated by the server against Size before a
// method is called. The contexts passed to the I/O methods are not
// cancelled when the client disconnects, so that a request that has
// started is never left half-done.
type Volume interface {
	Size() uint64
	ReadOnly() bool
	// ReadAt fills all of p from offset off.
	ReadAt(ctx context.Context, p []byte, off uint64) error
	// WriteAt writes all of p at off; with fua the data must be durable
	// when WriteAt returns. p must not be retained after return.
	WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error
	// Flush makes every write that has completed durable.
	Flush(ctx context.Context) error
	// Trim is a hint that the range is no longer needed. A volume that
	// cannot trim may return ErrNotSupported; the server then reports
	// success, as trimming is advisory.
	Trim(ctx context.Context, off, length uint64, fua bool) error
	// Zero makes the range read back as zeroes. With flags.FastZero a
	// volume that cannot do that faster than writing zeroes must fail
	// quickly with ErrNotFast and leave the range untouched. Without
	// FastZero a volume may return ErrNotSupported and the server falls
	// back to writing zero-filled buffers.
	Zero(ctx context.Context, off, length uint64, flags ZeroFlags) error
	// Close detaches the volume; it is called once, after the last
	// in-flight request on the connection finished.
	Close() error
}

// Adopter is implemented by volumes that can keep a write's buffer instead
// of copying it. The server then calls WriteAdopted instead of WriteAt and
// hands p over: it never reads, changes or reuses p again, so the volume may
// keep it for as long as it likes (the server allocates a new buffer for
// the next request). The semantics are otherwise those of WriteAt.
type Adopter interface {
	WriteAdopted(ctx context.Context, p []byte, off uint64, fua bool) error
}

// Submitter is implemented by volumes that can start a read or a write
// without waiting for it to finish. The server then calls SubmitRead and
// SubmitWrite from the connection's reader goroutine, which goes on
// reading requests, instead of calling ReadAt and WriteAt on a worker
// goroutine that waits: no goroutine is handed the request and none is
// woken to answer it, which is what a client with one request at a time
// waits for (two thread wake-ups per request). The volume calls done
// exactly once, from any goroutine, when the request has finished; done
// does not block (it queues the reply and writes it only if the socket
// takes it at once). A Submit method must not block for long either: it
// runs on the reader goroutine.
//
// SubmitWrite takes p over as WriteAdopted does; with fua the data is
// durable when done is called. SubmitRead passes done the length bytes
// read from off, which the server then owns (it sends them as they are).
//
// A volume may hold submitted requests back until Drained, which the
// server calls after submitting the requests that arrived together,
// before it waits for the client again: requests of a burst can then be
// started, and answered, as one batch.
type Submitter interface {
	SubmitRead(off uint64, length uint32, done func(data []byte, err error))
	SubmitWrite(p []byte, off uint64, fua bool, done func(err error))
	Drained()
}

// ZeroFlags are the command flags of NBD_CMD_WRITE_ZEROES.
type ZeroFlags struct {
	FUA      bool // data durable on return
	NoHole   bool // the range must stay allocated (NBD_CMD_FLAG_NO_HOLE)
	FastZero bool // fail with ErrNotFast unless zeroing is fast (NBD_CMD_FLAG_FAST_ZERO)
}

// Extenter is implemented by volumes that can report allocation; it backs
// the base:allocation metadata context of NBD_CMD_BLOCK_STATUS. Volumes
// without it report the whole range as allocated data (status 0), which
// the spec always allows.
type Extenter interface {
	// Extents describes [off, off+length) as consecutive extents starting
	// at off. It may describe less than length (at least one extent) or
	// more (the server clips). Lengths should be multiples of the minimum
	// block size.
	Extents(ctx context.Context, off, length uint64) ([]Extent, error)
}

// Extent is one run of a block status reply.
type Extent struct {
	Length uint64
	Hole   bool // not allocated (NBD_STATE_HOLE)
	Zero   bool // reads as zeroes (NBD_STATE_ZERO)
}

// BlockSizer is implemented by volumes with block size constraints other
// than the defaults (minimum 1, preferred 4096, maximum Server.MaxPayload).
// min must be a power of two ≤ 64 KiB, preferred a power of two ≥
// max(min, 512), and max a multiple of min; the server clamps max to
// Server.MaxPayload. Invalid values are ignored and the defaults used.
type BlockSizer interface {
	BlockSizes() (min, preferred, max uint32)
}

// Describer is implemented by volumes that have a human-readable
// description for NBD_INFO_DESCRIPTION.
type Describer interface {
	Description() string
}

// Errors a Backend or Volume returns (wrapped with %w) to select the NBD
// error sent to the client. Any other error becomes NBD_EIO.
var (
	// ErrUnknownExport: Open of a name that does not exist
	// (NBD_REP_ERR_UNKNOWN).
	ErrUnknownExport = errors.New("unknown export")
	// ErrBusy: Open of an export attached by another client
	// (NBD_REP_ERR_POLICY, the message says so).
	ErrBusy = errors.New("VDI is attached elsewhere")
	// ErrNoSpace maps to NBD_ENOSPC.
	ErrNoSpace = errors.New("no space left on device")
	// ErrPermission maps to NBD_EPERM (and to NBD_REP_ERR_POLICY from Open).
	ErrPermission = errors.New("operation not permitted")
	// ErrInvalid maps to NBD_EINVAL.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotSupported: the operation is not implemented by the volume.
	// For NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO it maps to
	// NBD_ENOTSUP; Trim and non-fast Zero are handled by the server
	// (see Volume); elsewhere it maps to NBD_EINVAL, because the spec
	// reserves NBD_ENOTSUP for fast zero.
	ErrNotSupported = errors.New("operation not supported")
	// ErrNotFast: Zero with FastZero cannot be done quickly (NBD_ENOTSUP).
	ErrNotFast = errors.New("cannot zero quickly")
)

// errno maps an error from a Volume to an NBD error value ("Error values"
// in the spec). Besides our sentinels it understands the usual syscall
// errors, mapping EDQUOT and EFBIG to ENOSPC as the spec asks.
func errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC),
		errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errnoNoSpace
	case errors.Is(err, ErrPermission), errors.Is(err, syscall.EPERM),
		errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EROFS):
		return errnoPerm
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrNotSupported),
		errors.Is(err, syscall.EINVAL):
		return errnoInval
	case errors.Is(err, ErrNotFast):
		return errnoNotSup
	}
	return errnoIO
}
