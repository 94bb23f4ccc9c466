package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// This file holds a small NBD client speaking the raw protocol, used by
// the protocol tests and the benchmarks, and helpers to run a server.

// hangGuard bounds every blocking read of the test client so that a
// server bug fails the test instead of hanging it. It is not a timing
// assertion.
const hangGuard = 60 * time.Second

// startServer serves srv on a loopback listener until the test ends and
// returns the address. Serve must return nil at shutdown.
func startServer(tb testing.TB, srv *Server) string {
	tb.Helper()
	ln := listen(tb)
	if srv.Logger == nil {
		srv.Logger = testLogger(tb)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

// listen returns a loopback listener closed at the end of the test.
func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// netPipe returns the two ends of an in-memory connection.
func netPipe(tb testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	tb.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return a, b
}

// testLogger logs through tb.Log at debug level (shown on failure or -v).
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// testBackend wraps a MemBackend so that tests can substitute their own
// Volume for some exports.
type testBackend struct {
	*MemBackend
	wrap func(v *MemVolume) Volume // nil: serve the MemVolume itself
}

func (b *testBackend) Open(ctx context.Context, name string) (Volume, error) {
	v, err := b.MemBackend.Open(ctx, name)
	if err != nil || b.wrap == nil {
		return v, err
	}
	return b.wrap(v.(*MemVolume)), nil
}

// testClient is a raw NBD client.
type testClient struct {
	tb testing.TB
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex // serialises requests

	structured bool
	size       uint64
	flags      uint16
	infos      map[uint16][]byte // NBD_REP_INFO payloads by type, from the last GO

	mu      sync.Mutex
	handle  uint64
	pending map[uint64]request // sent, not yet answered
	partial map[uint64]*reply  // structured replies still missing chunks
}

// optReply is one option reply.
type optReply struct {
	opt, typ uint32
	data     []byte
}

// optError is an error reply to an option.
type optError struct {
	typ uint32
	msg string
}

func (e *optError) Error() string { return fmt.Sprintf("option error %#x: %s", e.typ, e.msg) }

// reply is a complete reply to one request.
type reply struct {
	handle    uint64
	errno     uint32
	msg       string // structured error message
	data      []byte // read data
	contextID uint32
	descs     []descriptor
	chunks    int
}

// dial connects and reads the greeting, without sending client flags.
func dial(tb testing.TB, addr string) *testClient {
	tb.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(hangGuard))
	c := &testClient{
		tb:      tb,
		nc:      nc,
		br:      bufio.NewReaderSize(nc, 256<<10),
		pending: make(map[uint64]request),
		partial: make(map[uint64]*reply),
	}
	var g [18]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		tb.Fatalf("reading greeting: %v", err)
	}
	if m := binary.BigEndian.Uint64(g[0:]); m != magicNBD {
		tb.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != magicOption {
		tb.Fatalf("greeting option magic %#x", m)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		tb.Fatalf("handshake flags %#x", f)
	}
	return c
}

// connect dials and negotiates export name with NBD_OPT_GO.
func connect(tb testing.TB, addr, name string, structured, meta bool) *testClient {
	tb.Helper()
	c := dial(tb, addr)
	c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if err := c.negotiate(name, structured, meta); err != nil {
		tb.Fatalf("negotiating %q: %v", name, err)
	}
	return c
}

func (c *testClient) write(b []byte) {
	c.tb.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
}

func (c *testClient) clientFlags(f uint32) {
	c.tb.Helper()
	c.write(binary.BigEndian.AppendUint32(nil, f))
}

func (c *testClient) sendOption(opt uint32, data []byte) {
	c.tb.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

// sendOptionClosing sends an option the server answers by hanging up,
// possibly while the data is still being written: a write that fails
// because the server has closed the connection is that answer too.
func (c *testClient) sendOptionClosing(opt uint32, data []byte) {
	c.tb.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if _, err := c.nc.Write(append(b, data...)); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		c.tb.Fatalf("write: %v", err)
	}
}

func (c *testClient) readOptReply() (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptionReply {
		return optReply{}, fmt.Errorf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(c.br, r.data); err != nil {
		return optReply{}, err
	}
	return r, nil
}

// option sends an option and collects its replies up to the final one.
// It returns the non-final replies, and an *optError for an error reply.
func (c *testClient) option(opt uint32, data []byte) ([]optReply, error) {
	c.tb.Helper()
	c.sendOption(opt, data)
	var out []optReply
	for {
		r, err := c.readOptReply()
		if err != nil {
			return out, err
		}
		if r.opt != opt {
			return out, fmt.Errorf("reply for option %d to option %d", r.opt, opt)
		}
		switch {
		case r.typ&repErrBitmask != 0:
			return out, &optError{typ: r.typ, msg: string(r.data)}
		case r.typ == repAck:
			return out, nil
		}
		out = append(out, r)
	}
}

func infoRequest(name string, reqs ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint16(b, r)
	}
	return b
}

func metaRequest(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// negotiate runs STRUCTURED_REPLY and SET_META_CONTEXT as asked, then GO.
func (c *testClient) negotiate(name string, structured, meta bool) error {
	c.tb.Helper()
	if structured {
		if _, err := c.option(optStructuredReply, nil); err != nil {
			return fmt.Errorf("NBD_OPT_STRUCTURED_REPLY: %w", err)
		}
		c.structured = true
	}
	if meta {
		rs, err := c.option(optSetMetaContext, metaRequest(name, metaContextBaseAllocation))
		if err != nil {
			return fmt.Errorf("NBD_OPT_SET_META_CONTEXT: %w", err)
		}
		if len(rs) != 1 || rs[0].typ != repMetaContext {
			return fmt.Errorf("NBD_OPT_SET_META_CONTEXT replies %v", rs)
		}
	}
	infos, err := c.info(optGo, name, infoName, infoDescription, infoBlockSize)
	if err != nil {
		return err
	}
	c.infos = infos
	return nil
}

// info runs NBD_OPT_INFO or NBD_OPT_GO and returns the info payloads.
func (c *testClient) info(opt uint32, name string, reqs ...uint16) (map[uint16][]byte, error) {
	rs, err := c.option(opt, infoRequest(name, reqs...))
	if err != nil {
		return nil, err
	}
	infos := make(map[uint16][]byte)
	for _, r := range rs {
		if r.typ != repInfo || len(r.data) < 2 {
			return nil, fmt.Errorf("unexpected reply %+v", r)
		}
		typ := binary.BigEndian.Uint16(r.data)
		if _, dup := infos[typ]; dup {
			return nil, fmt.Errorf("info %d sent twice", typ)
		}
		infos[typ] = r.data[2:]
	}
	e, ok := infos[infoExport]
	if !ok || len(e) != 10 {
		return nil, fmt.Errorf("no valid NBD_INFO_EXPORT in %v", infos)
	}
	c.size = binary.BigEndian.Uint64(e)
	c.flags = binary.BigEndian.Uint16(e[8:])
	return infos, nil
}

// send writes one request (and payload) and returns its handle.
func (c *testClient) send(typ, flags uint16, off uint64, length uint32, payload []byte) uint64 {
	c.tb.Helper()
	c.mu.Lock()
	c.handle++
	h := c.handle
	c.pending[h] = request{flags: flags, typ: typ, handle: h, offset: off, length: length}
	c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.write(append(requestBytes(magicRequest, typ, flags, h, off, length), payload...))
	return h
}

func requestBytes(magic uint32, typ, flags uint16, handle, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// recv reads the next complete reply, validating it against the request.
func (c *testClient) recv() (reply, error) {
	for {
		var m [4]byte
		if _, err := io.ReadFull(c.br, m[:]); err != nil {
			return reply{}, err
		}
		switch magic := binary.BigEndian.Uint32(m[:]); magic {
		case magicSimpleReply:
			return c.recvSimple()
		case magicStructuredReply:
			if !c.structured {
				return reply{}, errors.New("structured reply without negotiation")
			}
			r, done, err := c.recvChunk()
			if err != nil || done {
				return r, err
			}
		default:
			return reply{}, fmt.Errorf("bad reply magic %#x", magic)
		}
	}
}

func (c *testClient) takePending(h uint64) (request, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	req, ok := c.pending[h]
	if !ok {
		return request{}, fmt.Errorf("reply for unknown handle %d", h)
	}
	delete(c.pending, h)
	return req, nil
}

func (c *testClient) recvSimple() (reply, error) {
	var b [12]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return reply{}, err
	}
	r := reply{errno: binary.BigEndian.Uint32(b[0:]), handle: binary.BigEndian.Uint64(b[4:])}
	req, err := c.takePending(r.handle)
	if err != nil {
		return r, err
	}
	if c.structured && req.typ == cmdRead {
		return r, errors.New("simple reply to NBD_CMD_READ with structured replies")
	}
	if req.typ == cmdRead && r.errno == 0 {
		r.data = make([]byte, req.length)
		if _, err := io.ReadFull(c.br, r.data); err != nil {
			return r, err
		}
	}
	return r, nil
}

// recvChunk reads one structured chunk (after its magic).
func (c *testClient) recvChunk() (reply, bool, error) {
	var b [16]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return reply{}, false, err
	}
	flags := binary.BigEndian.Uint16(b[0:])
	typ := binary.BigEndian.Uint16(b[2:])
	h := binary.BigEndian.Uint64(b[4:])
	p := make([]byte, binary.BigEndian.Uint32(b[12:]))
	if _, err := io.ReadFull(c.br, p); err != nil {
		return reply{}, false, err
	}
	c.mu.Lock()
	req, ok := c.pending[h]
	r := c.partial[h]
	if r == nil {
		r = &reply{handle: h}
		c.partial[h] = r
	}
	c.mu.Unlock()
	if !ok {
		return reply{}, false, fmt.Errorf("chunk for unknown handle %d", h)
	}
	r.chunks++
	switch typ {
	case replyTypeNone:
		if len(p) != 0 || flags&replyFlagDone == 0 {
			return reply{}, false, fmt.Errorf("bad NONE chunk: %d bytes, flags %#x", len(p), flags)
		}
	case replyTypeOffsetData:
		if req.typ != cmdRead || len(p) < 9 {
			return reply{}, false, fmt.Errorf("bad OFFSET_DATA chunk of %d bytes for %s", len(p), cmdName(req.typ))
		}
		off := binary.BigEndian.Uint64(p)
		data := p[8:]
		if off < req.offset || off+uint64(len(data)) > req.offset+uint64(req.length) {
			return reply{}, false, fmt.Errorf("OFFSET_DATA [%d,+%d) outside request [%d,+%d)", off, len(data), req.offset, req.length)
		}
		if r.data == nil {
			r.data = make([]byte, req.length)
		}
		copy(r.data[off-req.offset:], data)
	case replyTypeBlockStatus:
		if req.typ != cmdBlockStatus || len(p) < 12 || (len(p)-4)%8 != 0 {
			return reply{}, false, fmt.Errorf("bad BLOCK_STATUS chunk of %d bytes", len(p))
		}
		r.contextID = binary.BigEndian.Uint32(p)
		for q := p[4:]; len(q) > 0; q = q[8:] {
			d := descriptor{length: binary.BigEndian.Uint32(q), flags: binary.BigEndian.Uint32(q[4:])}
			if d.length == 0 {
				return reply{}, false, errors.New("zero-length block status descriptor")
			}
			r.descs = append(r.descs, d)
		}
	case replyTypeError:
		if len(p) < 6 {
			return reply{}, false, fmt.Errorf("bad ERROR chunk of %d bytes", len(p))
		}
		r.errno = binary.BigEndian.Uint32(p)
		n := int(binary.BigEndian.Uint16(p[4:]))
		if r.errno == 0 || n > len(p)-6 {
			return reply{}, false, fmt.Errorf("bad ERROR chunk: errno %d, message length %d of %d", r.errno, n, len(p)-6)
		}
		r.msg = string(p[6 : 6+n])
	default:
		return reply{}, false, fmt.Errorf("unexpected chunk type %d", typ)
	}
	if flags&replyFlagDone == 0 {
		return reply{}, false, nil
	}
	if _, err := c.takePending(h); err != nil {
		return reply{}, false, err
	}
	c.mu.Lock()
	delete(c.partial, h)
	c.mu.Unlock()
	if req.typ == cmdRead && r.errno == 0 && r.data == nil {
		r.data = make([]byte, req.length) // zero-length read
	}
	return *r, true, nil
}

// do sends one request and waits for its reply; nothing else may be in
// flight.
func (c *testClient) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	c.tb.Helper()
	h := c.send(typ, flags, off, length, payload)
	r, err := c.recv()
	if err != nil {
		c.tb.Fatalf("NBD_CMD_%s: %v", cmdName(typ), err)
	}
	if r.handle != h {
		c.tb.Fatalf("NBD_CMD_%s: reply for handle %d, want %d", cmdName(typ), r.handle, h)
	}
	return r
}

func (c *testClient) read(off uint64, length uint32) []byte {
	c.tb.Helper()
	r := c.do(cmdRead, 0, off, length, nil)
	if r.errno != 0 {
		c.tb.Fatalf("read [%d,+%d): errno %d %s", off, length, r.errno, r.msg)
	}
	return r.data
}

func (c *testClient) writeAt(p []byte, off uint64) {
	c.tb.Helper()
	if r := c.do(cmdWrite, 0, off, uint32(len(p)), p); r.errno != 0 {
		c.tb.Fatalf("write [%d,+%d): errno %d %s", off, len(p), r.errno, r.msg)
	}
}

// disconnect sends NBD_CMD_DISC and waits until the server closed the
// connection, which it does after detaching the volume.
func (c *testClient) disconnect() {
	c.tb.Helper()
	c.send(cmdDisc, 0, 0, 0, nil)
	c.expectClosed()
}

// expectClosed reads until the server closes the connection.
func (c *testClient) expectClosed() {
	c.tb.Helper()
	n, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.tb.Fatalf("connection not closed by the server (read %d bytes)", n)
	}
}
