package nbd

import (
	"bufio"
	"bytes"
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/cork"
	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// Defaults of the Server knobs.
const (
	DefaultMaxInFlight      = 64
	DefaultMaxPayload       = 32 << 20 // 2^25, the spec's interoperable maximum block size
	DefaultHandshakeTimeout = 60 * time.Second
	DefaultMaxConns         = 1024

	// maxMaxPayload caps MaxPayload: an OFFSET_DATA chunk must fit its
	// 32-bit length field together with the 8-byte offset.
	maxMaxPayload = 1 << 30
	// minMaxPayload: "the server MUST support unfragmented reads in which
	// the client's request length does not exceed 65,536 bytes".
	minMaxPayload = 64 << 10
	// minDiscardLimit is the smallest write payload above the maximum
	// block size that is read and discarded (answered NBD_EINVAL) instead
	// of dropping the connection.
	minDiscardLimit = 128 << 20
	// maxOptionLength bounds the data of one handshake option we read;
	// longer known options get NBD_REP_ERR_TOO_BIG.
	maxOptionLength = 64 << 10
	// maxOptionDiscard bounds option data we skip; anything longer is
	// treated as denial of service and the connection is dropped.
	maxOptionDiscard = 1 << 20
	// shutdownWriteGrace bounds how long replies may take to drain once
	// the server shuts down, so a client that stopped reading cannot
	// hold shutdown forever.
	shutdownWriteGrace = 10 * time.Second
	readBufferSize     = 64 << 10
	// handshakeBufferSize is the read buffer of a connection until its
	// handshake is over, so that connections that never get that far
	// cost little memory.
	handshakeBufferSize = 4 << 10
	// tlsWriteBufferSize coalesces the pieces of TLS replies (a header
	// and its data) into records of up to the TLS maximum.
	tlsWriteBufferSize = 16 << 10
)

// Server serves the volumes of a Backend over NBD (fixed newstyle
// negotiation only), in plain text or, with TLSConfig, over TLS that every
// client must start with NBD_OPT_STARTTLS before anything else. The zero
// value, with Backend set, is ready to use; fields must not change once
// serving started.
type Server struct {
	Backend Backend
	// Logger receives connection and protocol logs; nil discards them.
	Logger *slog.Logger
	// TLSConfig, when set, makes the server require TLS (the spec's
	// FORCEDTLS mode): before NBD_OPT_STARTTLS, every option but
	// NBD_OPT_ABORT is refused with NBD_REP_ERR_TLS_REQD, and
	// NBD_OPT_EXPORT_NAME ends the connection. Client authentication is
	// the config's: set ClientAuth to tls.RequireAndVerifyClientCert and
	// ClientCAs to the CA whose clients may connect. Nil serves plain
	// text only, and NBD_OPT_STARTTLS gets NBD_REP_ERR_POLICY.
	TLSConfig *tls.Config
	// MaxInFlight bounds the requests handled concurrently per
	// connection; reading stops while that many are in flight. Default 64.
	MaxInFlight int
	// MaxPayload is the largest READ/WRITE payload and the advertised
	// maximum block size. Default 32 MiB; values are clamped to
	// [64 KiB, 1 GiB] (unfragmented reads of 64 KiB must always work).
	MaxPayload uint32
	// HandshakeTimeout bounds the whole handshake, from the greeting to
	// the end of option haggling, TLS handshake included: a client that
	// trickles its options is cut off after it. 0 means
	// DefaultHandshakeTimeout; negative disables the limit.
	HandshakeTimeout time.Duration
	// MaxConns bounds the connections Serve serves at once. A connection
	// accepted beyond it makes room by closing the oldest connection
	// still in its handshake, so that clients that connect and send
	// nothing cannot lock others out; when every connection is past its
	// handshake, the new one is closed. 0 means DefaultMaxConns; negative
	// disables the limit.
	MaxConns int
	// Refused, when set, is called once for every connection refused
	// before transmission, with a short reason: "tls-required" (options
	// were refused for want of STARTTLS, or NBD_OPT_EXPORT_NAME came
	// first), "tls-handshake" (the TLS handshake failed, for example
	// without a client certificate from the CA), "max-conns" (closed for
	// MaxConns), "timeout" (the handshake took longer than
	// HandshakeTimeout) or "protocol" (a protocol violation). A client
	// that hangs up or aborts, or an export that cannot be opened, is not
	// a refusal. It must not block.
	Refused func(reason string)

	conns connTracker
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) maxInFlight() int {
	if s.MaxInFlight > 0 {
		return s.MaxInFlight
	}
	return DefaultMaxInFlight
}

func (s *Server) maxPayload() uint32 {
	switch {
	case s.MaxPayload == 0:
		return DefaultMaxPayload
	case s.MaxPayload < minMaxPayload:
		return minMaxPayload
	case s.MaxPayload > maxMaxPayload:
		return maxMaxPayload
	}
	return s.MaxPayload
}

// discardLimit is the largest oversized write payload we consume and
// answer with NBD_EINVAL; beyond it the connection is dropped.
func (s *Server) discardLimit() uint64 {
	return max(minDiscardLimit, 2*uint64(s.maxPayload()))
}

func (s *Server) maxConns() int {
	if s.MaxConns == 0 {
		return DefaultMaxConns
	}
	return s.MaxConns
}

func (s *Server) refused(reason string) {
	if s.Refused != nil {
		s.Refused(reason)
	}
}

func (s *Server) handshakeTimeout() time.Duration {
	if s.HandshakeTimeout == 0 {
		return DefaultHandshakeTimeout
	}
	return s.HandshakeTimeout
}

// Serve accepts connections on ln and serves each in its own goroutine
// until ctx is done or Accept fails. On ctx cancellation it closes ln,
// stops reading new requests on every connection, lets in-flight requests
// finish and reply, closes the connections and their volumes, and returns
// nil. If Accept fails, the open connections are shut down the same way
// and the accept error is returned.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Backend == nil {
		return errors.New("nbd: Server.Backend is nil")
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer func() {
		cancel()
		stop()
		wg.Wait()
	}()
	log := s.logger()
	log.Info("nbd: serving", "addr", ln.Addr().String(), "tls", s.TLSConfig != nil)
	if s.TLSConfig != nil && s.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		log.Warn("nbd: TLS does not require client certificates: any client can connect",
			"client_auth", s.TLSConfig.ClientAuth.String())
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				log.Info("nbd: shutting down", "addr", ln.Addr().String())
				return nil
			}
			return fmt.Errorf("nbd: accept on %s: %w", ln.Addr(), err)
		}
		tc, evicted := s.conns.admit(c, s.maxConns(), log)
		if evicted {
			s.refused("max-conns")
		}
		if tc == nil {
			c.Close()
			continue
		}
		wg.Go(func() {
			defer s.conns.release(tc)
			// serveConn logs why the connection ended.
			_ = s.serveConn(ctx, c, tc)
		})
	}
}

// ServeConn runs the NBD protocol on one connection and closes it. It
// returns nil when the session ended normally (NBD_OPT_ABORT, NBD_CMD_DISC,
// the client hanging up between messages, or ctx being done) and an error
// describing the protocol violation or I/O failure otherwise. Connections
// served this way do not count against MaxConns.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	return s.serveConn(ctx, nc, nil)
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn, tc *trackedConn) error {
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	log := s.logger().With("remote", remote)
	log.Info("nbd: connection opened")
	defer nc.Close()
	nc = nowait.Wrap(nc)
	if s.Backend == nil {
		err := errors.New("nbd: Server.Backend is nil")
		log.Error("nbd: connection closed", "err", err)
		return err
	}

	c := &conn{
		srv: s,
		nc:  nc,
		br:  bufio.NewReaderSize(nc, handshakeBufferSize),
		log: log,
	}
	// After STARTTLS c.nc is the TLS connection: closing it sends the
	// close_notify alert ("the server MUST close down the TLS session").
	defer func() { c.nc.Close() }()
	sess, err := c.handshake(ctx)
	s.conns.handshakeDone(tc)
	if err != nil || sess == nil {
		return c.finish("handshake", err)
	}
	c.growReader()
	c.log = c.log.With("export", sess.name)
	c.log.Info("nbd: export attached", "size", sess.size, "flags", fmt.Sprintf("%#04x", sess.flags),
		"structured", sess.structured, "block_status", sess.metaContext != 0)
	err = c.transmit(ctx, sess)
	if cerr := sess.vol.Close(); cerr != nil {
		c.log.Warn("nbd: closing volume", "err", cerr)
	}
	return c.finish("transmission", err)
}

// growReader gives the connection the larger read buffer of the
// transmission phase, keeping what the handshake buffer holds.
func (c *conn) growReader() {
	n := c.br.Buffered()
	if n == 0 {
		c.br = bufio.NewReaderSize(c.nc, readBufferSize)
		return
	}
	rest, _ := c.br.Peek(n)
	c.br = bufio.NewReaderSize(&prefixReader{p: bytes.Clone(rest), r: c.nc}, readBufferSize)
}

// prefixReader reads p, then r.
type prefixReader struct {
	p []byte
	r io.Reader
}

func (r *prefixReader) Read(b []byte) (int, error) {
	if len(r.p) == 0 {
		return r.r.Read(b)
	}
	n := copy(b, r.p)
	r.p = r.p[n:]
	return n, nil
}

// refusalReason classifies a handshake failure for Server.Refused: ""
// when the handshake did not fail (NBD_OPT_ABORT) or the client went away.
func refusalReason(err error) string {
	var pe *protocolError
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, errShutdown):
		return ""
	case errors.Is(err, errTLSRequired):
		return "tls-required"
	case errors.Is(err, errTLSHandshake):
		return "tls-handshake"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &pe):
		return "protocol"
	}
	return "" // the connection failed or was closed
}

// connTracker counts the connections Serve serves, for MaxConns, and
// keeps those still in their handshake in accept order.
type connTracker struct {
	mu         sync.Mutex
	live       int       // connections counted against MaxConns
	handshakes list.List // of *trackedConn, oldest first
}

// trackedConn is a connection counted by a connTracker.
type trackedConn struct {
	nc      net.Conn
	elem    *list.Element // in handshakes while in the handshake
	evicted bool          // closed to make room: no longer counted
}

// admit counts nc, making room by closing the oldest connection in its
// handshake (evicted) when max connections are served. It returns nil,
// having logged why, when nc is refused instead.
func (t *connTracker) admit(nc net.Conn, max int, log *slog.Logger) (tc *trackedConn, evicted bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if max > 0 && t.live >= max {
		front := t.handshakes.Front()
		if front == nil {
			log.Warn("nbd: connection refused: too many connections", "remote", addrString(nc.RemoteAddr()), "max_conns", max)
			return nil, true
		}
		old := t.handshakes.Remove(front).(*trackedConn)
		old.elem, old.evicted = nil, true
		t.live--
		log.Warn("nbd: too many connections: closing the oldest one still in its handshake",
			"remote", addrString(old.nc.RemoteAddr()), "for", addrString(nc.RemoteAddr()), "max_conns", max)
		old.nc.Close()
		evicted = true
	}
	tc = &trackedConn{nc: nc}
	tc.elem = t.handshakes.PushBack(tc)
	t.live++
	return tc, evicted
}

// handshakeDone marks tc as past its handshake: it is never evicted.
func (t *connTracker) handshakeDone(tc *trackedConn) {
	if tc == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tc.elem != nil {
		t.handshakes.Remove(tc.elem)
		tc.elem = nil
	}
}

// release uncounts tc once its connection is closed.
func (t *connTracker) release(tc *trackedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tc.elem != nil {
		t.handshakes.Remove(tc.elem)
		tc.elem = nil
	}
	if !tc.evicted {
		t.live--
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return "unknown"
	}
	return a.String()
}

// finish classifies how a connection ended, logs it and returns the error
// ServeConn reports.
func (c *conn) finish(phase string, err error) error {
	switch {
	case err == nil:
		c.log.Info("nbd: connection closed", "phase", phase)
		return nil
	case errors.Is(err, errShutdown):
		c.log.Info("nbd: connection closed by server shutdown", "phase", phase)
		return nil
	case errors.Is(err, io.EOF):
		c.log.Info("nbd: connection closed by client", "phase", phase)
		return nil
	case errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, os.ErrDeadlineExceeded), isNetOpError(err):
		c.log.Info("nbd: connection lost", "phase", phase, "err", err)
		return fmt.Errorf("nbd: %s: %w", phase, err)
	}
	c.log.Warn("nbd: connection dropped", "phase", phase, "err", err)
	return fmt.Errorf("nbd: %s: %w", phase, err)
}

// errShutdown marks the end of a session because the server shuts down.
var errShutdown = errors.New("server shutting down")

// protocolError is a violation by the client that forces a hard
// disconnect.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "protocol violation: " + e.msg }

func protoErrorf(format string, args ...any) error {
	return &protocolError{msg: fmt.Sprintf(format, args...)}
}

// isNetOpError reports failures of the socket itself (reset, timeout).
func isNetOpError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe)
}

// conn is the state of one client connection.
type conn struct {
	srv  *Server
	nc   net.Conn
	cork *cork.Conn // below nc once it is TLS: a reply's records go out in one write
	br   *bufio.Reader
	log  *slog.Logger
}

// Payload buffers are pooled in power-of-two size classes from 4 KiB up to
// maxMaxPayload.
const (
	minBufShift = 12
	maxBufShift = 30
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	c := 0
	for 1<<(minBufShift+c) < n {
		c++
	}
	return c
}

// getBuf returns a pool buffer of length n. The pointer travels with the
// buffer so that putBuf does not allocate.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if c >= len(bufPools) {
		b := make([]byte, n)
		return &b
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(minBufShift+c))
	return &b
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(p *[]byte) {
	c := bufClass(cap(*p))
	if c >= len(bufPools) || cap(*p) != 1<<(minBufShift+c) {
		return
	}
	bufPools[c].Put(p)
}
