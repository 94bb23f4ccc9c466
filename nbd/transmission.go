package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// request is a decoded request header ("Request message").
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

func decodeRequest(b *[requestHeaderLen]byte) (magic uint32, req request) {
	return binary.BigEndian.Uint32(b[0:]), request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		handle: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}
}

// transmitter runs the transmission phase of one connection. The calling
// goroutine reads requests; accepted requests are handed to worker
// goroutines, at most MaxInFlight at a time, which reply as soon as they
// are done, so replies go out of order.
type transmitter struct {
	c    *conn
	sess *session
	// volCtx is passed to volume calls. It is never cancelled: a request
	// that started runs to completion even if the client goes away or
	// the server shuts down.
	volCtx context.Context

	// sem holds one token per request between acceptance and the moment
	// its reply has been written, bounding buffers and volume calls.
	sem     chan struct{}
	jobs    chan job // to idle workers
	workers int      // started workers (reader goroutine only)
	wg      sync.WaitGroup

	// Replies are queued and written by whichever goroutine finds no
	// write in progress; it keeps writing until the queue is empty, so
	// replies that pile up meanwhile go out together in one writev and a
	// reply is never interleaved with another.
	qmu     sync.Mutex
	queue   []outReply
	spare   []outReply
	writing bool
	werr    error       // first write error; later replies are dropped
	iov     net.Buffers // scratch of the writer
	iovw    net.Buffers // consumed by WriteTo

	sub  Submitter       // the volume, if it takes requests without waiting
	held bool            // requests were submitted since the last Drained (reader goroutine only)
	raw  syscall.RawConn // the connection's descriptor, for writes that must not wait (nil: none)
	tlsw *bufio.Writer   // over a TLS connection: pieces of replies go out in full records
}

// job is an accepted request with its write payload.
type job struct {
	req request
	buf *[]byte // pool buffer, nil without payload
}

// outReply is one reply waiting to be written.
type outReply struct {
	hdr  [structuredHeaderLen + 8]byte // fits every header we send
	n    int                           // bytes of hdr used
	data []byte                        // payload after the header
	pool *[]byte                       // pool buffer holding data: put back once written
	slot bool                          // release a sem token once written
}

// maxDescriptors bounds the extents in one block status reply; the spec
// lets the server describe less than asked.
const maxDescriptors = 1 << 16

// zeroChunk is the largest buffer used when emulating write zeroes.
const zeroChunk = 1 << 20

// transmit serves requests until the client disconnects, breaks the
// protocol or ctx is done, then waits for the in-flight requests.
func (c *conn) transmit(ctx context.Context, sess *session) error {
	t := &transmitter{
		c:      c,
		sess:   sess,
		volCtx: context.WithoutCancel(ctx),
		sem:    make(chan struct{}, c.srv.maxInFlight()),
		jobs:   make(chan job),
		raw:    nowait.Raw(c.nc),
	}
	t.sub, _ = sess.vol.(Submitter)
	if tc, ok := c.nc.(*tls.Conn); ok {
		// Each Write of a tls.Conn is a record of its own, and a
		// system call: a reply's header and data go in one.
		t.tlsw = bufio.NewWriterSize(tc, tlsWriteBufferSize)
	}
	// On shutdown stop reading, but let replies to in-flight requests
	// drain ("the server SHOULD wait for inflight requests to be serviced
	// prior to initiating a hard disconnect").
	stop := context.AfterFunc(ctx, func() {
		now := time.Now()
		c.nc.SetReadDeadline(now)
		c.nc.SetWriteDeadline(now.Add(shutdownWriteGrace))
	})
	defer stop()
	err := t.readLoop(ctx)
	close(t.jobs)
	t.wg.Wait() // every request is done, so every reply was written or dropped
	if ctx.Err() != nil && (err == nil || errors.Is(err, os.ErrDeadlineExceeded)) {
		return errShutdown
	}
	return err
}

func (t *transmitter) readLoop(ctx context.Context) error {
	defer t.drained()
	var hdr [requestHeaderLen]byte
	for {
		if !t.requestBuffered() {
			t.drained() // the next read may wait for the client
		}
		if _, err := io.ReadFull(t.c.br, hdr[:]); err != nil {
			return fmt.Errorf("reading request: %w", err)
		}
		magic, req := decodeRequest(&hdr)
		if magic != magicRequest {
			// The stream cannot be trusted any more: we do not know
			// where the next request starts.
			return protoErrorf("bad request magic %#08x", magic)
		}
		if req.typ == cmdDisc {
			// Soft disconnect: the caller waits for the outstanding
			// requests, then closes.
			t.c.log.Debug("nbd: NBD_CMD_DISC received")
			return nil
		}
		if err := t.dispatch(ctx, req); err != nil {
			return err
		}
	}
}

// dispatch validates req, reads its payload and starts it.
func (t *transmitter) dispatch(ctx context.Context, req request) error {
	code, msg := t.validate(req)
	if code != 0 {
		if req.typ == cmdWrite && req.length > 0 {
			// The payload follows the header whatever we think of the
			// request; skip it to stay in sync, unless it is so large
			// that reading it is a denial of service ("Block size
			// constraints": either side MAY hard disconnect).
			if limit := t.c.srv.discardLimit(); uint64(req.length) > limit {
				return protoErrorf("NBD_CMD_WRITE with a %d-byte payload (more than %d)", req.length, limit)
			}
			if _, err := io.CopyN(io.Discard, t.c.br, int64(req.length)); err != nil {
				return fmt.Errorf("discarding write payload: %w", err)
			}
		}
		t.c.log.Debug("nbd: request rejected", "cmd", cmdName(req.typ), "type", req.typ, "flags", req.flags,
			"offset", req.offset, "length", req.length, "errno", code, "msg", msg)
		return t.replyError(req, code, msg)
	}

	select {
	case t.sem <- struct{}{}:
	default:
		// MaxInFlight requests are in flight: the requests held back
		// by a Submitter must run before one of them can finish.
		t.drained()
		select {
		case t.sem <- struct{}{}:
		case <-ctx.Done():
			t.replyError(req, errnoShutdown, "server is shutting down")
			return errShutdown
		}
	}
	var buf *[]byte
	if req.typ == cmdWrite && req.length > 0 {
		buf = getBuf(int(req.length))
		if _, err := io.ReadFull(t.c.br, *buf); err != nil {
			// The client went away mid-payload: nothing was started.
			putBuf(buf)
			<-t.sem
			return fmt.Errorf("reading write payload: %w", err)
		}
	}
	if t.sub != nil && (req.typ == cmdRead || req.typ == cmdWrite) && req.length > 0 {
		t.submit(req, buf)
		return nil
	}
	t.start(job{req: req, buf: buf})
	return nil
}

// drained tells a Submitter volume that the requests submitted so far
// are all there is for now.
func (t *transmitter) drained() {
	if t.held {
		t.held = false
		t.sub.Drained()
	}
}

// requestBuffered reports whether a whole request (header and write
// payload) is buffered, so that reading it cannot wait for the client.
func (t *transmitter) requestBuffered() bool {
	br := t.c.br
	n := br.Buffered()
	if n < requestHeaderLen {
		return false
	}
	b, err := br.Peek(requestHeaderLen)
	if err != nil {
		return false
	}
	var hdr [requestHeaderLen]byte
	copy(hdr[:], b)
	_, req := decodeRequest(&hdr)
	return req.typ != cmdWrite || uint64(n) >= requestHeaderLen+uint64(req.length)
}

// submit starts a read or write on a Submitter volume; the reply is sent
// from the volume's done callback.
func (t *transmitter) submit(req request, buf *[]byte) {
	t.held = true
	t.wg.Add(1) // until the reply is queued
	if req.typ == cmdWrite {
		t.sub.SubmitWrite(*buf, req.offset, req.flags&cmdFlagFUA != 0, func(err error) {
			if err != nil {
				t.postError(req, errno(err), err)
			} else {
				t.post(t.okReply(req))
			}
			t.wg.Done()
		})
		return
	}
	t.sub.SubmitRead(req.offset, req.length, func(data []byte, err error) {
		switch {
		case err != nil:
			t.postError(req, errno(err), err)
		case len(data) != int(req.length):
			t.postError(req, errnoIO, fmt.Errorf("volume returned %d bytes for a read of %d", len(data), req.length))
		default:
			t.post(t.readReply(req, data, nil))
		}
		t.wg.Done()
	})
}

// start hands j to an idle worker, starting one if none is idle, up to
// MaxInFlight workers. Once all exist, the caller's token means at most
// MaxInFlight-1 of them run requests and at most one more writes replies,
// so one becomes idle as soon as a volume call or a write finishes.
func (t *transmitter) start(j job) {
	select {
	case t.jobs <- j:
		return
	default:
	}
	if t.workers < cap(t.sem) {
		t.workers++
		t.wg.Add(1)
		go t.worker(j)
		return
	}
	t.jobs <- j
}

func (t *transmitter) worker(j job) {
	defer t.wg.Done()
	for ok := true; ok; j, ok = <-t.jobs {
		t.handle(j.req, j.buf)
	}
}

// validate checks req against the negotiated session and returns the NBD
// error for an invalid request, following "Error values" and the request
// type descriptions of the spec.
func (t *transmitter) validate(req request) (uint32, string) {
	s := t.sess
	// NBD_FLAG_SEND_FUA is advertised, so FUA "MUST [be accepted on] all
	// commands".
	allowed := cmdFlagFUA
	switch req.typ {
	case cmdRead:
		if s.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdFlush, cmdTrim, cmdCache:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	default:
		return errnoInval, fmt.Sprintf("unknown command %d", req.typ)
	}
	if bad := req.flags &^ allowed; bad != 0 {
		return errnoInval, fmt.Sprintf("command flags %#x are not valid for NBD_CMD_%s", bad, cmdName(req.typ))
	}
	switch req.typ {
	case cmdFlush:
		if req.offset != 0 || req.length != 0 {
			return errnoInval, "NBD_CMD_FLUSH offset and length must be zero"
		}
		return 0, ""
	case cmdBlockStatus:
		if s.metaContext == 0 {
			return errnoInval, "NBD_CMD_BLOCK_STATUS without a negotiated metadata context"
		}
		if req.length == 0 {
			return errnoInval, "zero-length NBD_CMD_BLOCK_STATUS"
		}
	}
	writes := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
	if writes && s.readOnly {
		return errnoPerm, "export is read-only"
	}
	if (req.typ == cmdRead || req.typ == cmdWrite) && req.length > s.maxBlock {
		return errnoInval, fmt.Sprintf("length %d exceeds the maximum block size %d", req.length, s.maxBlock)
	}
	if req.offset > s.size || uint64(req.length) > s.size-req.offset {
		msg := fmt.Sprintf("range [%d, +%d) is beyond the end of the export (%d bytes)", req.offset, req.length, s.size)
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			return errnoNoSpace, msg
		}
		return errnoInval, msg
	}
	if m := uint64(s.minBlock); m > 1 && (req.offset%m != 0 || uint64(req.length)%m != 0) {
		return errnoInval, fmt.Sprintf("range [%d, +%d) is not aligned to the minimum block size %d", req.offset, req.length, m)
	}
	return 0, ""
}

// handle executes one validated request and replies. buf is the payload of
// a write. The request's sem token is released once its reply is written.
func (t *transmitter) handle(req request, buf *[]byte) {
	s, ctx := t.sess, t.volCtx
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		t.read(req)
		return
	case cmdBlockStatus:
		t.blockStatus(req)
		return
	case cmdWrite:
		if a, ok := s.vol.(Adopter); ok && buf != nil {
			err = a.WriteAdopted(ctx, *buf, req.offset, fua)
		} else if buf != nil {
			err = s.vol.WriteAt(ctx, *buf, req.offset, fua)
			putBuf(buf)
		}
	case cmdFlush:
		err = s.vol.Flush(ctx)
	case cmdTrim:
		if req.length > 0 {
			err = s.vol.Trim(ctx, req.offset, uint64(req.length), fua)
			if errors.Is(err, ErrNotSupported) {
				err = nil // trimming is only a hint
			}
		}
	case cmdCache:
		// Accepted and ignored: "there MUST NOT be any difference in
		// semantics compared to if the client had not used this command".
	case cmdWriteZeroes:
		if req.length > 0 {
			if code, err := t.zero(req); err != nil {
				t.volumeError(req, code, err)
				return
			}
		}
	}
	if err != nil {
		t.volumeError(req, errno(err), err)
		return
	}
	t.replyOK(req)
}

func (t *transmitter) read(req request) {
	if req.length == 0 {
		t.replyRead(req, nil)
		return
	}
	buf := getBuf(int(req.length))
	if err := t.sess.vol.ReadAt(t.volCtx, *buf, req.offset); err != nil {
		putBuf(buf)
		t.volumeError(req, errno(err), err)
		return
	}
	t.replyRead(req, buf) // the reply owns buf now
}

// zero runs NBD_CMD_WRITE_ZEROES and returns the NBD error on failure.
func (t *transmitter) zero(req request) (uint32, error) {
	flags := ZeroFlags{
		FUA:      req.flags&cmdFlagFUA != 0,
		NoHole:   req.flags&cmdFlagNoHole != 0,
		FastZero: req.flags&cmdFlagFastZero != 0,
	}
	err := t.sess.vol.Zero(t.volCtx, req.offset, uint64(req.length), flags)
	switch {
	case err == nil:
		return 0, nil
	case flags.FastZero && (errors.Is(err, ErrNotFast) || errors.Is(err, ErrNotSupported)):
		// "the server MUST fail quickly with NBD_ENOTSUP"
		return errnoNotSup, err
	case errors.Is(err, ErrNotSupported) || errors.Is(err, ErrNotFast):
		// Without FAST_ZERO the server "MUST NOT fail with NBD_ENOTSUP":
		// write zeroes the slow way.
		if err := t.writeZeroes(req.offset, uint64(req.length), flags.FUA); err != nil {
			return errno(err), err
		}
		return 0, nil
	}
	return errno(err), err
}

func (t *transmitter) writeZeroes(off, length uint64, fua bool) error {
	p := getBuf(int(min(length, zeroChunk)))
	defer putBuf(p)
	buf := *p
	clear(buf)
	for length > 0 {
		n := min(length, uint64(len(buf)))
		if err := t.sess.vol.WriteAt(t.volCtx, buf[:n], off, fua); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// descriptor is one extent of a NBD_REPLY_TYPE_BLOCK_STATUS chunk.
type descriptor struct {
	length, flags uint32
}

func (t *transmitter) blockStatus(req request) {
	var exts []Extent
	if e, ok := t.sess.vol.(Extenter); ok {
		var err error
		exts, err = e.Extents(t.volCtx, req.offset, uint64(req.length))
		if err != nil {
			t.volumeError(req, errno(err), err)
			return
		}
	}
	descs := descriptors(exts, req.length, t.sess.minBlock, req.flags&cmdFlagReqOne != 0)
	t.replyBlockStatus(req, descs)
}

// descriptors turns the extents a volume reported for a request of length
// bytes into block status descriptors: clipped to the request, without
// empty extents, with lengths that are multiples of align (unaligned
// neighbours are merged; status bits are kept only when both sides have
// them, which is always safe), neighbours with equal status merged, and at
// most one descriptor with reqOne. Without usable extents the whole range
// is reported with status 0 ("a server MAY always safely report a status
// of 0").
func descriptors(exts []Extent, length, align uint32, reqOne bool) []descriptor {
	limit, a := uint64(length), uint64(max(align, 1))
	var out []descriptor
	var cur descriptor
	have := false
	pos := uint64(0) // bytes of the request described so far
	for _, e := range exts {
		if pos >= limit || len(out) >= maxDescriptors {
			break
		}
		l := min(e.Length, limit-pos)
		if l == 0 {
			continue
		}
		var f uint32
		if e.Hole {
			f |= stateHole
		}
		if e.Zero {
			f |= stateZero
		}
		switch {
		case have && pos%a != 0:
			cur.length += uint32(l)
			cur.flags &= f
		case have && cur.flags == f:
			cur.length += uint32(l)
		default:
			if have {
				out = append(out, cur)
			}
			cur, have = descriptor{length: uint32(l), flags: f}, true
		}
		pos += l
	}
	if have {
		cur.length -= uint32(pos % a)
		if cur.length > 0 {
			out = append(out, cur)
		}
	}
	if len(out) == 0 {
		return []descriptor{{length: length}}
	}
	merged := out[:1]
	for _, d := range out[1:] {
		if last := &merged[len(merged)-1]; last.flags == d.flags {
			last.length += d.length
		} else {
			merged = append(merged, d)
		}
	}
	if reqOne {
		merged = merged[:1]
	}
	return merged
}

// volumeError replies to a request the volume failed.
func (t *transmitter) volumeError(req request, code uint32, err error) {
	t.logFailure(req, code, err)
	t.enqueue(t.errorReply(req, code, err.Error()), true)
}

// postError answers a failed submitted request (see post).
func (t *transmitter) postError(req request, code uint32, err error) {
	t.logFailure(req, code, err)
	t.post(t.errorReply(req, code, err.Error()))
}

func (t *transmitter) logFailure(req request, code uint32, err error) {
	level := t.c.log.Warn
	if code == errnoNotSup {
		level = t.c.log.Debug // fast zero refused: routine
	}
	level("nbd: request failed", "cmd", cmdName(req.typ), "offset", req.offset, "length", req.length,
		"errno", code, "err", err)
}

// Reply encoding ("Simple reply message", "Structured reply chunk
// message").

func putSimpleHeader(b []byte, code uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], code)
	binary.BigEndian.PutUint64(b[8:], handle)
}

func putStructuredHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicStructuredReply)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint32(b[16:], length)
}

// replyOK acknowledges a running request without payload.
func (t *transmitter) replyOK(req request) {
	t.enqueue(t.okReply(req), true)
}

func (t *transmitter) okReply(req request) outReply {
	var r outReply
	if !t.sess.structured {
		putSimpleHeader(r.hdr[:], 0, req.handle)
		r.n = simpleReplyLen
	} else {
		putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeNone, req.handle, 0)
		r.n = structuredHeaderLen
	}
	return r
}

// replyRead sends the data of a successful read as one reply; buf is a
// pool buffer (nil for an empty read) that the reply takes over.
func (t *transmitter) replyRead(req request, buf *[]byte) {
	if buf == nil {
		// A structured OFFSET_DATA chunk must carry at least one byte;
		// a simple reply has nothing to add.
		t.replyOK(req)
		return
	}
	t.enqueue(t.readReply(req, *buf, buf), true)
}

// readReply carries data (held in the pool buffer pool, if not nil).
func (t *transmitter) readReply(req request, data []byte, pool *[]byte) outReply {
	r := outReply{data: data, pool: pool}
	if !t.sess.structured {
		putSimpleHeader(r.hdr[:], 0, req.handle)
		r.n = simpleReplyLen
	} else {
		// One OFFSET_DATA chunk, final: the data is complete before we
		// send it, so no error can follow. This also satisfies
		// NBD_CMD_FLAG_DF.
		putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeOffsetData, req.handle, uint32(8+len(data)))
		binary.BigEndian.PutUint64(r.hdr[structuredHeaderLen:], req.offset)
		r.n = structuredHeaderLen + 8
	}
	return r
}

// replyError answers a request rejected before it started.
func (t *transmitter) replyError(req request, code uint32, msg string) error {
	t.enqueue(t.errorReply(req, code, msg), false)
	return t.writeErr()
}

// errorReply encodes a failure: a simple reply with the error (and no
// payload, even for reads), or a final NBD_REPLY_TYPE_ERROR chunk carrying
// msg.
func (t *transmitter) errorReply(req request, code uint32, msg string) outReply {
	var r outReply
	if !t.sess.structured {
		putSimpleHeader(r.hdr[:], code, req.handle)
		r.n = simpleReplyLen
		return r
	}
	msg = sanitizeMessage(msg, maxOptionMessage)
	putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeError, req.handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(r.hdr[structuredHeaderLen:], code)
	binary.BigEndian.PutUint16(r.hdr[structuredHeaderLen+4:], uint16(len(msg)))
	r.n = structuredHeaderLen + 6
	r.data = []byte(msg)
	return r
}

// replyBlockStatus sends the single NBD_REPLY_TYPE_BLOCK_STATUS chunk for
// base:allocation.
func (t *transmitter) replyBlockStatus(req request, descs []descriptor) {
	var r outReply
	n := 4 + 8*len(descs)
	putStructuredHeader(r.hdr[:], replyFlagDone, replyTypeBlockStatus, req.handle, uint32(n))
	binary.BigEndian.PutUint32(r.hdr[structuredHeaderLen:], t.sess.metaContext)
	r.n = structuredHeaderLen + 4
	r.data = make([]byte, 8*len(descs))
	for i, d := range descs {
		binary.BigEndian.PutUint32(r.data[8*i:], d.length)
		binary.BigEndian.PutUint32(r.data[8*i+4:], d.flags)
	}
	t.enqueue(r, true)
}

// enqueue queues r (slot: it answers a request holding a sem token) and,
// unless another goroutine is writing, writes the queue until it is
// empty.
func (t *transmitter) enqueue(r outReply, slot bool) {
	r.slot = slot
	t.qmu.Lock()
	if !t.pushLocked(r) {
		t.qmu.Unlock()
		return
	}
	// Let the workers that are already runnable (replies the daemon
	// completed together) add theirs first: one writev then carries them
	// all. With nobody else runnable this returns at once.
	t.qmu.Unlock()
	runtime.Gosched()
	t.drain()
}

// post queues the reply to a request from a goroutine that must not block
// (a Submitter's done callback). When it answers the only request in
// flight and no write is in progress, it writes the reply at once, if the
// socket takes it without waiting: a client with one request at a time
// gets its answer without a goroutine hand-off. Otherwise, and for what
// the socket does not take, a writer goroutine writes the queue; with
// several requests in flight, replies completing meanwhile join its
// writev.
func (t *transmitter) post(r outReply) {
	r.slot = true
	t.qmu.Lock()
	if !t.pushLocked(r) {
		t.qmu.Unlock()
		return
	}
	t.wg.Add(1) // the writer, or the write here
	if len(t.sem) > 1 || t.raw == nil || t.werr != nil {
		t.qmu.Unlock()
		go func() {
			defer t.wg.Done()
			t.drain()
		}()
		return
	}
	batch := t.queue
	t.queue = t.spare[:0]
	t.qmu.Unlock()
	iov := t.iovOf(batch)
	n, _ := nowait.Writev(t.raw, iov)
	if n == t.iovLen(iov) {
		clear(t.iov)
		t.done(batch, nil)
		t.qmu.Lock()
		if len(t.queue) == 0 {
			t.writing = false
			t.qmu.Unlock()
			t.wg.Done()
			return
		}
		t.qmu.Unlock()
		go func() {
			defer t.wg.Done()
			t.drain()
		}()
		return
	}
	// The socket took part of it (or nothing): a writer finishes the
	// batch, then whatever was queued meanwhile.
	go func() {
		defer t.wg.Done()
		t.iovw = nowait.Advance(iov, n)
		t.done(batch, t.writeIOV())
		t.drain()
	}()
}

// pushLocked queues r and reports whether the caller is to write the
// queue: no write was in progress (one is now). Called with qmu held.
func (t *transmitter) pushLocked(r outReply) bool {
	t.queue = append(t.queue, r)
	if t.writing {
		return false
	}
	t.writing = true
	return true
}

// drain writes the queue until it is empty, then ends the write in
// progress; the caller set t.writing.
func (t *transmitter) drain() {
	t.qmu.Lock()
	for len(t.queue) > 0 {
		batch := t.queue
		t.queue = t.spare[:0]
		werr := t.werr
		t.qmu.Unlock()

		if werr == nil {
			t.iovw = t.iovOf(batch)
			werr = t.writeIOV()
		}
		t.done(batch, werr)
		t.qmu.Lock()
	}
	t.writing = false
	t.qmu.Unlock()
}

// done releases the replies of a written (or failed) batch and records
// the first write error.
func (t *transmitter) done(batch []outReply, werr error) {
	for i := range batch {
		if batch[i].pool != nil {
			putBuf(batch[i].pool)
		}
		if batch[i].slot {
			<-t.sem
		}
		batch[i] = outReply{}
	}
	t.qmu.Lock()
	if t.werr == nil && werr != nil {
		t.werr = werr
	}
	t.spare = batch[:0]
	t.qmu.Unlock()
}

// iovOf lays a batch of replies out for one writev, in t.iov.
func (t *transmitter) iovOf(batch []outReply) net.Buffers {
	t.iov = t.iov[:0]
	for i := range batch {
		t.iov = append(t.iov, batch[i].hdr[:batch[i].n])
		if len(batch[i].data) > 0 {
			t.iov = append(t.iov, batch[i].data)
		}
	}
	return t.iov
}

func (t *transmitter) iovLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// writeIOV writes t.iovw with blocking writes. After a failure the
// connection is closed, which also stops the request reader.
func (t *transmitter) writeIOV() error {
	var err error
	if w, ok := t.c.nc.(*nowait.Conn); ok {
		_, err = w.Writev(t.iovw)
	} else if t.tlsw != nil {
		if t.c.cork != nil {
			t.c.cork.Hold()
		}
		for _, b := range t.iovw {
			if _, err = t.tlsw.Write(b); err != nil {
				break
			}
		}
		if err == nil {
			err = t.tlsw.Flush()
		}
		if t.c.cork != nil {
			if rerr := t.c.cork.Release(); err == nil {
				err = rerr
			}
		}
	} else {
		_, err = t.iovw.WriteTo(t.c.nc) // consumes t.iovw
	}
	clear(t.iov) // drop references to payloads
	if err != nil {
		t.c.log.Info("nbd: reply write failed, closing connection", "err", err)
		t.c.nc.Close()
		return fmt.Errorf("writing replies: %w", err)
	}
	return nil
}

// writeErr returns the first reply write error.
func (t *transmitter) writeErr() error {
	t.qmu.Lock()
	defer t.qmu.Unlock()
	return t.werr
}
