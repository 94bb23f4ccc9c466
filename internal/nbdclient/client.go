// Package nbdclient is the NBD client of the CLI's bulk data paths (`vdi
// read` and `vdi write`): fixed newstyle negotiation ending in NBD_OPT_GO,
// optionally NBD_OPT_STARTTLS first, and optionally structured replies
// with the base:allocation metadata context (block status, so a writer
// can tell never-written space from data). Transmission is pipelined: any
// number of requests may be in flight on the one connection, sent by any
// goroutines, and a reader goroutine matches each reply to its request by
// handle, reading a read's data straight into the caller's buffer.
//
// It speaks the protocol of doc/proto.md in
// github.com/NetworkBlockDevice/nbd and knows nothing about sheepdog.
package nbdclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Wire constants (doc/proto.md).
const (
	magicNBD             = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption          = 0x49484156454f5054 // "IHAVEOPT"
	magicOldstyle        = 0x0000420281861253
	magicOptionReply     = 0x0003e889045565a9
	magicRequest         = 0x25609513
	magicSimpleReply     = 0x67446698
	magicStructuredReply = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optStartTLS        = 5
	optGo              = 7
	optStructuredReply = 8
	optSetMetaContext  = 10

	repAck         = 1
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31
	repErrUnsup    = 1 | repErrBit
	repErrPolicy   = 2 | repErrBit
	repErrUnknown  = 6 | repErrBit

	infoExport    = 0
	infoBlockSize = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1

	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeErrBit      = 1 << 15
	replyTypeErrorOffset = 2 | replyTypeErrBit

	stateHole = 1 << 0
	stateZero = 1 << 1

	metaBaseAllocation = "base:allocation"
	maxOptionReply     = 64 << 10
	maxChunkMessage    = 64 << 10
	defaultMaxBlock    = 32 << 20
)

// Transmission flags the server announces (Flags).
const (
	FlagReadOnly     = 1 << 1
	FlagSendFlush    = 1 << 2
	FlagSendFUA      = 1 << 3
	FlagSendTrim     = 1 << 5
	FlagWriteZeroes  = 1 << 6
	FlagCanMultiConn = 1 << 8
)

// ErrClosed is the error of calls made on, or in flight when, the client
// was closed.
var ErrClosed = errors.New("nbd: client closed")

// ErrNoBlockStatus is returned by BlockStatus when the server did not
// agree to structured replies with base:allocation.
var ErrNoBlockStatus = errors.New("nbd: the server does not report block status")

// Options configure Dial.
type Options struct {
	// Export is the name of the export to attach.
	Export string
	// BlockStatus negotiates structured replies and the base:allocation
	// metadata context, so BlockStatus works (when the server agrees).
	BlockStatus bool
	// TLS, if set, upgrades the connection with NBD_OPT_STARTTLS before
	// any other option; a server that refuses fails the handshake.
	TLS *tls.Config
	// HandshakeTimeout bounds the whole negotiation (default 60 s; the
	// server may take a few seconds to attach the export).
	HandshakeTimeout time.Duration
}

// OptionError is a server's refusal of an option during the handshake,
// with the message it gave.
type OptionError struct {
	Option uint32
	Type   uint32
	Msg    string
}

func (e *OptionError) Error() string {
	what := map[uint32]string{optStartTLS: "STARTTLS", optGo: "GO", optStructuredReply: "STRUCTURED_REPLY", optSetMetaContext: "SET_META_CONTEXT"}[e.Option]
	if e.Msg != "" {
		return e.Msg
	}
	return fmt.Sprintf("NBD server refused NBD_OPT_%s (reply type %#x)", what, e.Type)
}

// Policy reports a refusal by policy (NBD_REP_ERR_POLICY): for sheepdog,
// the VDI is attached by another client.
func (e *OptionError) Policy() bool { return e.Type == repErrPolicy }

// Unknown reports that the export does not exist (NBD_REP_ERR_UNKNOWN).
func (e *OptionError) Unknown() bool { return e.Type == repErrUnknown }

// Error is a failed request: the errno the server replied with and, with
// structured replies, its message.
type Error struct {
	Cmd    string
	Offset uint64
	Length uint64
	Errno  uint32
	Msg    string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("NBD %s of %d bytes at offset %d: %s", e.Cmd, e.Length, e.Offset, errnoName(e.Errno))
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

func errnoName(n uint32) string {
	switch n {
	case 1:
		return "EPERM (operation not permitted)"
	case 5:
		return "EIO (input/output error)"
	case 12:
		return "ENOMEM (out of memory)"
	case 22:
		return "EINVAL (invalid argument)"
	case 28:
		return "ENOSPC (no space left)"
	case 75:
		return "EOVERFLOW (value too large)"
	case 95:
		return "ENOTSUP (not supported)"
	case 108:
		return "ESHUTDOWN (server shutting down)"
	}
	return fmt.Sprintf("error %d", n)
}

func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", c)
}

// Extent is one run of a block status answer.
type Extent struct {
	Length uint64
	Hole   bool // not allocated: reads as zeros, takes no space
	Zero   bool // reads as zeros
}

// Client is one NBD connection in the transmission phase. Its methods may
// be called from any number of goroutines at once.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader
	size       uint64
	flags      uint16
	maxBlock   uint32
	prefBlock  uint32
	structured bool
	metaID     uint32 // base:allocation's context id, 0 when not negotiated

	wmu sync.Mutex // one request written at a time

	mu      sync.Mutex
	calls   map[uint64]*Call
	handle  uint64
	err     error // the connection's end: nothing more is sent
	closing bool  // NBD_CMD_DISC sent: EOF is the expected end

	readerDone chan struct{}
}

// Dial negotiates opt.Export on the connection nc (from any dialer) and
// returns the client in the transmission phase. nc is closed on failure.
func Dial(ctx context.Context, nc net.Conn, opt Options) (*Client, error) {
	c, err := handshake(ctx, nc, opt)
	if err != nil {
		nc.Close()
		if c != nil && c.nc != nc {
			c.nc.Close()
		}
		return nil, err
	}
	c.calls = map[uint64]*Call{}
	c.readerDone = make(chan struct{})
	go c.reader()
	return c, nil
}

// Size is the export's size in bytes.
func (c *Client) Size() uint64 { return c.size }

// Flags are the transmission flags the server announced.
func (c *Client) Flags() uint16 { return c.flags }

// ReadOnly reports a read-only export.
func (c *Client) ReadOnly() bool { return c.flags&FlagReadOnly != 0 }

// MaxBlock is the largest read or write payload the server takes.
func (c *Client) MaxBlock() uint32 { return c.maxBlock }

// PreferredBlock is the server's preferred request size (a hint).
func (c *Client) PreferredBlock() uint32 { return c.prefBlock }

// CanBlockStatus reports whether BlockStatus is available.
func (c *Client) CanBlockStatus() bool { return c.metaID != 0 }

type optReply struct {
	typ  uint32
	data []byte
}

// handshake runs the negotiation; on failure the returned client (if
// any) carries the connection to close (a TLS one after STARTTLS).
func handshake(ctx context.Context, nc net.Conn, opt Options) (*Client, error) {
	timeout := opt.HandshakeTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stop()

	c := &Client{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	fail := func(err error) (*Client, error) {
		if ctx.Err() != nil {
			return c, fmt.Errorf("NBD handshake: %w", ctx.Err())
		}
		return c, err
	}
	var greet [18]byte
	if _, err := io.ReadFull(c.br, greet[:]); err != nil {
		return fail(fmt.Errorf("NBD handshake: reading the greeting: %w", err))
	}
	be := binary.BigEndian
	if be.Uint64(greet[0:]) != magicNBD {
		return fail(fmt.Errorf("not an NBD server (greeting %q)", greet[:8]))
	}
	if be.Uint64(greet[8:]) == magicOldstyle {
		return fail(errors.New("the NBD server speaks only the oldstyle protocol"))
	}
	if be.Uint64(greet[8:]) != magicOption {
		return fail(fmt.Errorf("NBD handshake: bad option magic %#x", be.Uint64(greet[8:])))
	}
	hflags := be.Uint16(greet[16:])
	if hflags&flagFixedNewstyle == 0 {
		return fail(errors.New("the NBD server does not offer fixed newstyle negotiation"))
	}
	cflags := uint32(flagFixedNewstyle)
	if hflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	if _, err := c.nc.Write(be.AppendUint32(nil, cflags)); err != nil {
		return fail(fmt.Errorf("NBD handshake: %w", err))
	}

	if opt.TLS != nil {
		rep, err := c.option(optStartTLS, nil)
		if err != nil {
			return fail(err)
		}
		if rep.typ != repAck {
			return fail(optError(optStartTLS, rep, "the NBD server refused TLS (NBD_OPT_STARTTLS)"))
		}
		if c.br.Buffered() > 0 {
			return fail(errors.New("NBD handshake: data after the STARTTLS reply"))
		}
		tc := tls.Client(nc, opt.TLS)
		c.nc = tc
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("NBD TLS handshake: %w", err))
		}
		c.br = bufio.NewReaderSize(tc, 64<<10)
	}

	if opt.BlockStatus {
		rep, err := c.option(optStructuredReply, nil)
		if err != nil {
			return fail(err)
		}
		c.structured = rep.typ == repAck
		if c.structured {
			d := be.AppendUint32(nil, uint32(len(opt.Export)))
			d = append(d, opt.Export...)
			d = be.AppendUint32(d, 1)
			d = be.AppendUint32(d, uint32(len(metaBaseAllocation)))
			d = append(d, metaBaseAllocation...)
			if err := c.send(optSetMetaContext, d); err != nil {
				return fail(err)
			}
			for {
				rep, err := c.reply(optSetMetaContext)
				if err != nil {
					return fail(err)
				}
				if rep.typ == repMetaContext && len(rep.data) >= 4 && string(rep.data[4:]) == metaBaseAllocation {
					c.metaID = be.Uint32(rep.data)
				}
				if rep.typ == repAck || rep.typ&repErrBit != 0 {
					break
				}
			}
		}
	}

	d := be.AppendUint32(nil, uint32(len(opt.Export)))
	d = append(d, opt.Export...)
	d = be.AppendUint16(d, 1)
	d = be.AppendUint16(d, infoBlockSize)
	if err := c.send(optGo, d); err != nil {
		return fail(err)
	}
	c.maxBlock, c.prefBlock = defaultMaxBlock, 4096
	gotExport := false
	for {
		rep, err := c.reply(optGo)
		if err != nil {
			return fail(err)
		}
		if rep.typ&repErrBit != 0 {
			return fail(optError(optGo, rep, ""))
		}
		if rep.typ == repAck {
			break
		}
		if rep.typ != repInfo || len(rep.data) < 2 {
			continue
		}
		switch be.Uint16(rep.data) {
		case infoExport:
			if len(rep.data) < 12 {
				return fail(errors.New("NBD handshake: short NBD_INFO_EXPORT"))
			}
			c.size, c.flags, gotExport = be.Uint64(rep.data[2:]), be.Uint16(rep.data[10:]), true
		case infoBlockSize:
			if len(rep.data) >= 14 {
				c.prefBlock, c.maxBlock = be.Uint32(rep.data[6:]), be.Uint32(rep.data[10:])
			}
		}
	}
	if !gotExport {
		return fail(errors.New("NBD handshake: the server sent no NBD_INFO_EXPORT"))
	}
	if c.maxBlock == 0 {
		c.maxBlock = defaultMaxBlock
	}
	_ = c.nc.SetDeadline(time.Time{})
	return c, nil
}

func optError(opt uint32, rep optReply, fallback string) error {
	msg := string(rep.data)
	if msg == "" {
		msg = fallback
	}
	return &OptionError{Option: opt, Type: rep.typ, Msg: msg}
}

// option sends one option and reads its single reply.
func (c *Client) option(opt uint32, data []byte) (optReply, error) {
	if err := c.send(opt, data); err != nil {
		return optReply{}, err
	}
	return c.reply(opt)
}

func (c *Client) send(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("NBD handshake: sending option %d: %w", opt, err)
	}
	return nil
}

func (c *Client) reply(opt uint32) (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, fmt.Errorf("NBD handshake: reading the reply to option %d: %w", opt, err)
	}
	be := binary.BigEndian
	if be.Uint64(h[0:]) != magicOptionReply || be.Uint32(h[8:]) != opt {
		return optReply{}, fmt.Errorf("NBD handshake: bad reply to option %d (magic %#x, option %d)", opt, be.Uint64(h[0:]), be.Uint32(h[8:]))
	}
	n := be.Uint32(h[16:])
	if n > maxOptionReply {
		return optReply{}, fmt.Errorf("NBD handshake: reply of %d bytes to option %d", n, opt)
	}
	rep := optReply{typ: be.Uint32(h[12:]), data: make([]byte, n)}
	if _, err := io.ReadFull(c.br, rep.data); err != nil {
		return optReply{}, fmt.Errorf("NBD handshake: reading the reply to option %d: %w", opt, err)
	}
	return rep, nil
}

// Call is one request in flight.
type Call struct {
	cmd     uint16
	off     uint64
	length  uint64
	buf     []byte // a read's destination
	extents []Extent
	err     error
	done    chan struct{}
}

// Done is closed when the reply has arrived (or the connection failed).
func (k *Call) Done() <-chan struct{} { return k.done }

// Wait waits for the reply and returns the request's error.
func (k *Call) Wait() error {
	<-k.done
	return k.err
}

// Extents is a block status call's answer, from its offset on (valid
// once Wait returned nil).
func (k *Call) Extents() []Extent { return k.extents }

func (c *Client) start(cmd, flags uint16, off, length uint64, data, buf []byte) *Call {
	k := &Call{cmd: cmd, off: off, length: length, buf: buf, done: make(chan struct{})}
	if length > 1<<32-1 {
		k.err = fmt.Errorf("NBD %s of %d bytes: longer than a request can be", cmdName(cmd), length)
		close(k.done)
		return k
	}
	if (cmd == cmdRead || cmd == cmdWrite) && length > uint64(c.maxBlock) {
		k.err = fmt.Errorf("NBD %s of %d bytes: the server takes at most %d", cmdName(cmd), length, c.maxBlock)
		close(k.done)
		return k
	}
	c.mu.Lock()
	if c.err != nil {
		k.err = c.err
		c.mu.Unlock()
		close(k.done)
		return k
	}
	c.handle++
	h := c.handle
	c.calls[h] = k
	c.mu.Unlock()

	var hdr [28]byte
	be := binary.BigEndian
	be.PutUint32(hdr[0:], magicRequest)
	be.PutUint16(hdr[4:], flags)
	be.PutUint16(hdr[6:], cmd)
	be.PutUint64(hdr[8:], h)
	be.PutUint64(hdr[16:], off)
	be.PutUint32(hdr[24:], uint32(length))
	c.wmu.Lock()
	var err error
	if len(data) > 0 {
		bufs := net.Buffers{hdr[:], data}
		_, err = bufs.WriteTo(c.nc)
	} else {
		_, err = c.nc.Write(hdr[:])
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("NBD: sending %s: %w", cmdName(cmd), err))
	}
	return k
}

// ReadAsync starts reading len(p) bytes at off into p, which must not be
// touched until the call is done.
func (c *Client) ReadAsync(p []byte, off uint64) *Call {
	return c.start(cmdRead, 0, off, uint64(len(p)), nil, p)
}

// WriteAsync starts writing p at off; p must not change until the call
// is done.
func (c *Client) WriteAsync(p []byte, off uint64, fua bool) *Call {
	var f uint16
	if fua {
		f = cmdFlagFUA
	}
	return c.start(cmdWrite, f, off, uint64(len(p)), p, nil)
}

// ZeroAsync starts NBD_CMD_WRITE_ZEROES over [off, off+length): with
// noHole the space stays allocated, else the server may punch holes.
func (c *Client) ZeroAsync(off, length uint64, noHole bool) *Call {
	var f uint16
	if noHole {
		f = cmdFlagNoHole
	}
	return c.start(cmdWriteZeroes, f, off, length, nil, nil)
}

// TrimAsync starts NBD_CMD_TRIM over [off, off+length).
func (c *Client) TrimAsync(off, length uint64) *Call {
	return c.start(cmdTrim, 0, off, length, nil, nil)
}

// FlushAsync starts NBD_CMD_FLUSH: every write completed before it is
// durable once it completes.
func (c *Client) FlushAsync() *Call { return c.start(cmdFlush, 0, 0, 0, nil, nil) }

// BlockStatusAsync asks for the allocation of [off, off+length); the
// answer may cover less (ask again for the rest), never more.
func (c *Client) BlockStatusAsync(off, length uint64) *Call {
	if c.metaID == 0 {
		k := &Call{err: ErrNoBlockStatus, done: make(chan struct{})}
		close(k.done)
		return k
	}
	return c.start(cmdBlockStatus, 0, off, min(length, 1<<32-1), nil, nil)
}

// Read reads len(p) bytes at off.
func (c *Client) Read(p []byte, off uint64) error { return c.ReadAsync(p, off).Wait() }

// Write writes p at off.
func (c *Client) Write(p []byte, off uint64, fua bool) error { return c.WriteAsync(p, off, fua).Wait() }

// Zero writes zeros over [off, off+length) (see ZeroAsync).
func (c *Client) Zero(off, length uint64, noHole bool) error {
	return c.ZeroAsync(off, length, noHole).Wait()
}

// Trim discards [off, off+length).
func (c *Client) Trim(off, length uint64) error { return c.TrimAsync(off, length).Wait() }

// Flush makes every completed write durable.
func (c *Client) Flush() error { return c.FlushAsync().Wait() }

// BlockStatus returns the allocation of [off, off+length) from off on;
// it may cover less than asked.
func (c *Client) BlockStatus(off, length uint64) ([]Extent, error) {
	k := c.BlockStatusAsync(off, length)
	if err := k.Wait(); err != nil {
		return nil, err
	}
	return k.extents, nil
}

// fail ends the connection with err (unless it ended already): the
// reader then fails every call in flight with it. Only the reader
// completes calls, so no read is still filling a buffer whose call is
// done.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	_ = c.nc.Close()
}

// Close ends the session: it sends NBD_CMD_DISC once the calls in flight
// have their replies, then waits (up to timeout) for the server to close
// the connection, which an NBD server does after it let go of the export
// (for sheepdog: detached the VDI), so the next client can attach it at
// once. It returns an error if the connection had failed.
func (c *Client) Close(timeout time.Duration) error {
	c.mu.Lock()
	err := c.err
	var inflight []*Call
	for _, k := range c.calls {
		inflight = append(inflight, k)
	}
	c.mu.Unlock()
	if err != nil {
		<-c.readerDone
		if errors.Is(err, ErrClosed) {
			return nil
		}
		return err
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for _, k := range inflight {
		select {
		case <-k.done:
		case <-deadline.C:
			c.fail(fmt.Errorf("NBD: no reply within %v", timeout))
			<-c.readerDone
			return c.err
		}
	}
	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], magicRequest)
	binary.BigEndian.PutUint16(hdr[6:], cmdDisc)
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.wmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(timeout))
	_, werr := c.nc.Write(hdr[:])
	c.wmu.Unlock()
	if werr == nil {
		select {
		case <-c.readerDone:
		case <-deadline.C:
		}
	}
	c.fail(ErrClosed)
	<-c.readerDone
	if werr != nil {
		return fmt.Errorf("NBD: sending DISC: %w", werr)
	}
	return nil
}

// Abort closes the connection at once; calls in flight fail with err.
func (c *Client) Abort(err error) {
	if err == nil {
		err = ErrClosed
	}
	c.fail(err)
}

// reader reads replies until the connection ends, then fails the calls
// still in flight.
func (c *Client) reader() {
	defer close(c.readerDone)
	var err error
	for err == nil {
		err = c.readReply()
	}
	c.mu.Lock()
	if c.err == nil {
		switch {
		case c.closing && errors.Is(err, io.EOF):
			c.err = ErrClosed
		default:
			c.err = fmt.Errorf("NBD connection: %w", err)
		}
	}
	err = c.err
	calls := c.calls
	c.calls = map[uint64]*Call{}
	c.mu.Unlock()
	_ = c.nc.Close()
	for _, k := range calls {
		k.err = err
		close(k.done)
	}
}

func (c *Client) lookup(h uint64) (*Call, error) {
	c.mu.Lock()
	k := c.calls[h]
	c.mu.Unlock()
	if k == nil {
		return nil, fmt.Errorf("reply for unknown handle %d", h)
	}
	return k, nil
}

func (c *Client) finish(h uint64, k *Call) {
	c.mu.Lock()
	_, ok := c.calls[h]
	delete(c.calls, h)
	c.mu.Unlock()
	if ok {
		close(k.done)
	}
}

func (c *Client) readReply() error {
	var m [4]byte
	if _, err := io.ReadFull(c.br, m[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	switch be.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return unexpected(err)
		}
		errno, handle := be.Uint32(h[0:]), be.Uint64(h[4:])
		k, err := c.lookup(handle)
		if err != nil {
			return err
		}
		if errno != 0 {
			k.err = &Error{Cmd: cmdName(k.cmd), Offset: k.off, Length: k.length, Errno: errno}
		} else if k.cmd == cmdRead {
			if _, err := io.ReadFull(c.br, k.buf); err != nil {
				return unexpected(err)
			}
		}
		c.finish(handle, k)
		return nil
	case magicStructuredReply:
		return c.readChunk()
	}
	return fmt.Errorf("bad reply magic %#x", be.Uint32(m[:]))
}

// readChunk reads one structured reply chunk (after its magic).
func (c *Client) readChunk() error {
	var h [16]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return unexpected(err)
	}
	be := binary.BigEndian
	flags, typ, handle, n := be.Uint16(h[0:]), be.Uint16(h[2:]), be.Uint64(h[4:]), be.Uint32(h[12:])
	k, err := c.lookup(handle)
	if err != nil {
		return err
	}
	switch {
	case typ == replyTypeNone:
		if n != 0 {
			return fmt.Errorf("NONE chunk with %d bytes", n)
		}
	case typ == replyTypeOffsetData && k.cmd == cmdRead:
		if n < 8 {
			return fmt.Errorf("short OFFSET_DATA chunk (%d bytes)", n)
		}
		var o [8]byte
		if _, err := io.ReadFull(c.br, o[:]); err != nil {
			return unexpected(err)
		}
		off, l := be.Uint64(o[:]), uint64(n-8)
		if off < k.off || off+l > k.off+k.length {
			return fmt.Errorf("OFFSET_DATA chunk at %d+%d outside the read at %d+%d", off, l, k.off, k.length)
		}
		if _, err := io.ReadFull(c.br, k.buf[off-k.off:off-k.off+l]); err != nil {
			return unexpected(err)
		}
	case typ == replyTypeOffsetHole && k.cmd == cmdRead:
		var b [12]byte
		if n != 12 {
			return fmt.Errorf("OFFSET_HOLE chunk of %d bytes", n)
		}
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return unexpected(err)
		}
		off, l := be.Uint64(b[0:]), uint64(be.Uint32(b[8:]))
		if off < k.off || off+l > k.off+k.length {
			return fmt.Errorf("OFFSET_HOLE chunk at %d+%d outside the read at %d+%d", off, l, k.off, k.length)
		}
		clear(k.buf[off-k.off : off-k.off+l])
	case typ == replyTypeBlockStatus && k.cmd == cmdBlockStatus:
		if n < 4 || (n-4)%8 != 0 {
			return fmt.Errorf("BLOCK_STATUS chunk of %d bytes", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return unexpected(err)
		}
		if be.Uint32(b) == c.metaID {
			covered := uint64(0)
			for _, e := range k.extents {
				covered += e.Length
			}
			for d := b[4:]; len(d) >= 8; d = d[8:] {
				l, st := uint64(be.Uint32(d)), be.Uint32(d[4:])
				l = min(l, k.length-covered)
				if l == 0 {
					break
				}
				covered += l
				k.extents = append(k.extents, Extent{Length: l, Hole: st&stateHole != 0, Zero: st&stateZero != 0})
			}
		}
	case typ&replyTypeErrBit != 0:
		if n < 6 || n > maxChunkMessage {
			return fmt.Errorf("error chunk of %d bytes", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return unexpected(err)
		}
		errno, ml := be.Uint32(b), int(be.Uint16(b[4:]))
		if 6+ml > len(b) {
			return fmt.Errorf("error chunk message of %d bytes in %d", ml, n)
		}
		if k.err == nil {
			e := &Error{Cmd: cmdName(k.cmd), Offset: k.off, Length: k.length, Errno: errno, Msg: string(b[6 : 6+ml])}
			if typ == replyTypeErrorOffset && len(b) >= 6+ml+8 {
				e.Offset = be.Uint64(b[6+ml:])
			}
			if errno == 0 {
				e.Errno = 5 // "a server MUST NOT send a zero error"
			}
			k.err = e
		}
	default:
		// Unknown chunk types that are not errors may be ignored.
		if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
			return unexpected(err)
		}
	}
	if flags&replyFlagDone != 0 {
		c.finish(handle, k)
	}
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
