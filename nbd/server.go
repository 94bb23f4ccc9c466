package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// Defaults of the Server knobs.
const (
	DefaultMaxInFlight      = 64
	DefaultMaxPayload       = 32 << 20 // 2^25, the spec's interoperable maximum block size
	DefaultHandshakeTimeout = 60 * time.Second

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
)

// Server serves the volumes of a Backend over NBD (fixed newstyle
// negotiation only, no TLS). The zero value, with Backend set, is ready to
// use; fields must not change once serving started.
type Server struct {
	Backend Backend
	// Logger receives connection and protocol logs; nil discards them.
	Logger *slog.Logger
	// MaxInFlight bounds the requests handled concurrently per
	// connection; reading stops while that many are in flight. Default 64.
	MaxInFlight int
	// MaxPayload is the largest READ/WRITE payload and the advertised
	// maximum block size. Default 32 MiB; values are clamped to
	// [64 KiB, 1 GiB] (unfragmented reads of 64 KiB must always work).
	MaxPayload uint32
	// HandshakeTimeout bounds the whole option haggling phase. 0 means
	// DefaultHandshakeTimeout; negative disables the limit.
	HandshakeTimeout time.Duration
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
	s.logger().Info("nbd: serving", "addr", ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.logger().Info("nbd: shutting down", "addr", ln.Addr().String())
				return nil
			}
			return fmt.Errorf("nbd: accept on %s: %w", ln.Addr(), err)
		}
		wg.Go(func() {
			// ServeConn logs why the connection ended.
			_ = s.ServeConn(ctx, c)
		})
	}
}

// ServeConn runs the NBD protocol on one connection and closes it. It
// returns nil when the session ended normally (NBD_OPT_ABORT, NBD_CMD_DISC,
// the client hanging up between messages, or ctx being done) and an error
// describing the protocol violation or I/O failure otherwise.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
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
		br:  bufio.NewReaderSize(nc, readBufferSize),
		log: log,
	}
	sess, err := c.handshake(ctx)
	if err != nil || sess == nil {
		return c.finish("handshake", err)
	}
	c.log = log.With("export", sess.name)
	c.log.Info("nbd: export attached", "size", sess.size, "flags", fmt.Sprintf("%#04x", sess.flags),
		"structured", sess.structured, "block_status", sess.metaContext != 0)
	err = c.transmit(ctx, sess)
	if cerr := sess.vol.Close(); cerr != nil {
		c.log.Warn("nbd: closing volume", "err", cerr)
	}
	return c.finish("transmission", err)
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
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	log *slog.Logger
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
