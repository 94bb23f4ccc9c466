package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fuzzConn is a net.Conn whose client side is a fixed byte stream; what
// the server writes is recorded.
type fuzzConn struct {
	r  *bytes.Reader
	mu sync.Mutex
	w  bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.w.Write(p)
}
func (c *fuzzConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.w.Bytes())
}
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return fuzzAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return fuzzAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

type fuzzAddr struct{}

func (fuzzAddr) Network() string { return "fuzz" }
func (fuzzAddr) String() string  { return "fuzz" }

// countingBackend counts attaches and detaches.
type countingBackend struct {
	*MemBackend
	opens, closes, doubleCloses atomic.Int32
}

type countingVolume struct {
	*MemVolume
	b      *countingBackend
	closed atomic.Bool
}

func (b *countingBackend) Open(ctx context.Context, name string) (Volume, error) {
	v, err := b.MemBackend.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	b.opens.Add(1)
	return &countingVolume{MemVolume: v.(*MemVolume), b: b}, nil
}

func (v *countingVolume) Close() error {
	if v.closed.Swap(true) {
		v.b.doubleCloses.Add(1)
		return nil
	}
	v.b.closes.Add(1)
	return v.MemVolume.Close()
}

// serveFuzz runs ServeConn on input and returns what the server wrote.
func serveFuzz(input []byte) ([]byte, error) {
	out, _, err := serveFuzzTLS(input, nil)
	return out, err
}

// serveFuzzTLS runs ServeConn with cfg as the TLS config and returns what
// the server wrote and how many volumes it attached.
func serveFuzzTLS(input []byte, cfg *tls.Config) ([]byte, int32, error) {
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	mb.Add("ro", 64<<10).SetReadOnly(true)
	b := &countingBackend{MemBackend: mb}
	srv := &Server{Backend: b, Logger: slog.New(slog.DiscardHandler), MaxPayload: 64 << 10, MaxInFlight: 4, TLSConfig: cfg}
	c := &fuzzConn{r: bytes.NewReader(input)}
	srv.ServeConn(context.Background(), c) // must return: input ends with EOF
	if o, cl, d := b.opens.Load(), b.closes.Load(), b.doubleCloses.Load(); o != cl || d != 0 {
		return nil, o, fmt.Errorf("%d volumes attached, %d closed, %d closed twice", o, cl, d)
	}
	return c.output(), b.opens.Load(), nil
}

// parseOptionReplies splits the option replies off the start of p (what
// follows the greeting), checking each: a complete reply, an error
// message that is a valid NBD string. It stops at the first bytes that are
// not an option reply, or after NBD_REP_ACK to NBD_OPT_STARTTLS (TLS
// follows).
func parseOptionReplies(p []byte) (replies []optReply, rest []byte, err error) {
	for len(p) >= 20 && binary.BigEndian.Uint64(p) == magicOptionReply {
		r := optReply{opt: binary.BigEndian.Uint32(p[8:]), typ: binary.BigEndian.Uint32(p[12:])}
		n := binary.BigEndian.Uint32(p[16:])
		if uint64(n) > uint64(len(p)-20) {
			return replies, p, fmt.Errorf("option reply of %d bytes, %d written", n, len(p)-20)
		}
		r.data = p[20 : 20+n]
		p = p[20+n:]
		if r.typ&repErrBitmask != 0 && (!validString(string(r.data)) || len(r.data) > maxOptionMessage) {
			return replies, p, fmt.Errorf("error reply %#x with an invalid message %q", r.typ, r.data)
		}
		replies = append(replies, r)
		if r.opt == optStartTLS && r.typ == repAck {
			break
		}
	}
	return replies, p, nil
}

func option(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var clientFixedNoZeroes = binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)

// structuredPrefix negotiates structured replies and base:allocation for
// "disk" and enters transmission.
var structuredPrefix = cat(
	clientFixedNoZeroes,
	option(optStructuredReply, nil),
	option(optSetMetaContext, metaRequest("disk", metaContextBaseAllocation)),
	option(optGo, infoRequest("disk", infoBlockSize)),
)

func FuzzHandshake(f *testing.F) {
	seeds := [][]byte{
		nil,
		{0, 0, 0, 0},
		clientFixedNoZeroes,
		structuredPrefix,
		cat(clientFixedNoZeroes, option(optList, nil), option(optAbort, nil)),
		cat(clientFixedNoZeroes, option(optList, []byte{1}), option(99, []byte("xx")), option(optStartTLS, nil)),
		cat(clientFixedNoZeroes, option(optInfo, infoRequest("disk", infoName, infoDescription)), option(optGo, infoRequest("nope"))),
		cat(clientFixedNoZeroes, option(optInfo, []byte{0, 0, 0, 9, 'a'})),
		cat(clientFixedNoZeroes, option(optListMetaContext, metaRequest("disk")), option(optListMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})),
		cat(clientFixedNoZeroes, option(optSetMetaContext, metaRequest("disk", "base:allocation"))),
		cat(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle), option(optExportName, []byte("disk")),
			requestBytes(magicRequest, cmdRead, 0, 1, 0, 512), requestBytes(magicRequest, cmdDisc, 0, 2, 0, 0)),
		cat(clientFixedNoZeroes, option(optExportName, []byte("nope"))),
		cat(clientFixedNoZeroes, option(optGo, infoRequest("ro")), requestBytes(magicRequest, cmdWrite, 0, 1, 0, 4), []byte("abcd")),
		cat(clientFixedNoZeroes, binary.BigEndian.AppendUint64(nil, magicOption), []byte{0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff}),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		out, err := serveFuzz(input)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) < 18 || binary.BigEndian.Uint64(out) != magicNBD || binary.BigEndian.Uint64(out[8:]) != magicOption {
			t.Fatalf("no greeting in output % x", out[:min(len(out), 18)])
		}
		replies, _, err := parseOptionReplies(out[18:])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range replies {
			switch r.typ {
			case repAck, repServer, repInfo, repMetaContext, repErrUnsup, repErrPolicy,
				repErrInvalid, repErrUnknown, repErrShutdown, repErrTooBig:
			default:
				// Notably NBD_REP_ERR_TLS_REQD: "The server MUST NOT
				// respond to any option request with
				// NBD_REP_ERR_TLS_REQD" in NOTLS mode.
				t.Fatalf("reply type %#x to option %d without TLS", r.typ, r.opt)
			}
		}
	})
}

// FuzzHandshakeTLS runs the handshake of a server that requires TLS on
// arbitrary input. Whatever comes before a TLS handshake the fuzzer cannot
// complete, the server attaches no volume, answers every option but
// STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD, and writes nothing but
// option replies until it acknowledges STARTTLS.
func FuzzHandshakeTLS(f *testing.F) {
	ca := newTestCA(f, "fuzz CA")
	cfg := ca.serverConfig(f)
	fixed := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle)
	clientHello := []byte{0x16, 3, 1, 0, 0x2f, 1, 0, 0, 0x2b, 3, 3}
	seeds := [][]byte{
		nil,
		clientFixedNoZeroes,
		cat(clientFixedNoZeroes, option(optStartTLS, nil)),
		cat(clientFixedNoZeroes, option(optStartTLS, nil), clientHello),
		cat(fixed, option(optGo, infoRequest("disk")), option(optStartTLS, nil), clientHello),
		cat(clientFixedNoZeroes, option(optExportName, []byte("disk")), requestBytes(magicRequest, cmdRead, 0, 1, 0, 512)),
		cat(clientFixedNoZeroes, option(optList, nil), option(optInfo, infoRequest("disk")), option(optAbort, nil)),
		cat(clientFixedNoZeroes, option(optStructuredReply, nil), option(optSetMetaContext, metaRequest("disk", "base:allocation")), option(optGo, infoRequest("disk"))),
		cat(clientFixedNoZeroes, option(optStartTLS, []byte{1}), option(99, []byte("x")), option(optStartTLS, nil)),
		cat(clientFixedNoZeroes, option(optInfo, make([]byte, maxOptionLength+1)), option(optStartTLS, make([]byte, maxOptionLength+1))),
		cat(clientFixedNoZeroes, option(optStartTLS, nil), option(optGo, infoRequest("disk"))),
		cat(binary.BigEndian.AppendUint32(nil, 0), option(optExportName, []byte("disk"))),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		out, opens, err := serveFuzzTLS(input, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if opens != 0 {
			t.Fatalf("%d volumes attached without TLS", opens)
		}
		if len(out) < 18 || binary.BigEndian.Uint64(out) != magicNBD || binary.BigEndian.Uint64(out[8:]) != magicOption {
			t.Fatalf("no greeting in output % x", out[:min(len(out), 18)])
		}
		replies, rest, err := parseOptionReplies(out[18:])
		if err != nil {
			t.Fatal(err)
		}
		started := false
		for _, r := range replies {
			switch {
			case r.opt == optStartTLS && r.typ == repAck:
				started = true
			case r.opt == optStartTLS && (r.typ == repErrInvalid || r.typ == repErrTooBig):
			case r.opt == optAbort && r.typ == repAck:
			case r.typ == repErrTLSReqd && r.opt != optStartTLS && r.opt != optAbort:
			default:
				t.Fatalf("reply type %#x to option %d before TLS", r.typ, r.opt)
			}
		}
		if !started && len(rest) != 0 {
			t.Fatalf("%d bytes that are not option replies written before TLS: % x", len(rest), rest[:min(len(rest), 32)])
		}
	})
}

// handshakeOutput is what the server writes for structuredPrefix.
var handshakeOutput = sync.OnceValues(func() ([]byte, error) {
	return serveFuzz(structuredPrefix)
})

func FuzzRequests(f *testing.F) {
	req := func(typ, flags uint16, off uint64, length uint32, payload ...byte) []byte {
		return append(requestBytes(magicRequest, typ, flags, 7, off, length), payload...)
	}
	seeds := [][]byte{
		nil,
		req(cmdRead, 0, 0, 4096),
		cat(req(cmdWrite, cmdFlagFUA, 512, 4, 1, 2, 3, 4), req(cmdRead, cmdFlagDF, 0, 1024), req(cmdFlush, 0, 0, 0)),
		cat(req(cmdTrim, 0, 0, 8192), req(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFastZero, 4096, 4096), req(cmdBlockStatus, cmdFlagReqOne, 0, 1<<20)),
		req(cmdBlockStatus, 0, 0, 1<<20),
		req(cmdRead, 0, 1<<20-1, 2),
		req(cmdWrite, 0, 1<<20, 8, 1, 2, 3, 4, 5, 6, 7, 8),
		req(cmdWrite, 0, 0, 1<<20, 1, 2, 3),
		req(cmdWrite, 0, 0, 0xffffffff),
		req(42, 0xffff, 0xffffffffffffffff, 0xffffffff),
		req(cmdRead, 0, 0, 0),
		req(cmdCache, 0, 0, 4096),
		cat(req(cmdRead, 0, 0, 512), req(cmdDisc, 0, 0, 0), req(cmdRead, 0, 0, 512)),
		cat(req(cmdRead, 0, 0, 512), []byte{0x12, 0x56, 0x09, 0x53}),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, requests []byte) {
		hs, err := handshakeOutput()
		if err != nil {
			t.Fatal(err)
		}
		out, err := serveFuzz(cat(structuredPrefix, requests))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(out, hs) {
			t.Fatalf("handshake output differs")
		}
		if err := checkStructuredReplies(out[len(hs):]); err != nil {
			t.Fatal(err)
		}
	})
}

// checkStructuredReplies checks that p is a sequence of well-formed final
// structured reply chunks.
func checkStructuredReplies(p []byte) error {
	for len(p) > 0 {
		if len(p) < structuredHeaderLen {
			return fmt.Errorf("truncated chunk header: % x", p)
		}
		magic := binary.BigEndian.Uint32(p)
		flags := binary.BigEndian.Uint16(p[4:])
		typ := binary.BigEndian.Uint16(p[6:])
		n := int(binary.BigEndian.Uint32(p[16:]))
		if magic != magicStructuredReply {
			return fmt.Errorf("reply magic %#x", magic)
		}
		if flags != replyFlagDone {
			return fmt.Errorf("chunk flags %#x", flags)
		}
		if n > len(p)-structuredHeaderLen {
			return fmt.Errorf("chunk of %d bytes, %d left", n, len(p)-structuredHeaderLen)
		}
		payload := p[structuredHeaderLen : structuredHeaderLen+n]
		switch typ {
		case replyTypeNone:
			if n != 0 {
				return fmt.Errorf("NONE chunk with %d bytes", n)
			}
		case replyTypeOffsetData:
			if n < 9 {
				return fmt.Errorf("OFFSET_DATA chunk with %d bytes", n)
			}
		case replyTypeBlockStatus:
			if n < 12 || (n-4)%8 != 0 {
				return fmt.Errorf("BLOCK_STATUS chunk with %d bytes", n)
			}
			for q := payload[4:]; len(q) > 0; q = q[8:] {
				if binary.BigEndian.Uint32(q) == 0 {
					return fmt.Errorf("zero-length extent")
				}
			}
		case replyTypeError:
			if n < 6 || binary.BigEndian.Uint32(payload) == 0 || int(binary.BigEndian.Uint16(payload[4:])) != n-6 {
				return fmt.Errorf("bad ERROR chunk % x", payload)
			}
		default:
			return fmt.Errorf("chunk type %d", typ)
		}
		p = p[structuredHeaderLen+n:]
	}
	return nil
}
