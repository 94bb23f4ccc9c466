package net

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	gonet "net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// Defaults for zero Config fields.
const (
	DefaultMaxFrame         = 64 << 20
	DefaultConnsPerPeer     = 2
	DefaultQueueLen         = 4096
	DefaultDialTimeout      = 2 * time.Second
	DefaultHandshakeTimeout = 2 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
)

const (
	minBackoff  = 50 * time.Millisecond // first redial delay after a failed dial
	maxBackoff  = time.Second           // cap of the redial delay
	bufSize     = 64 << 10              // bufio size of every connection
	maxInflight = 64                    // concurrent requests per admin connection
)

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Config configures a Transport. Zero values select the defaults.
type Config struct {
	// ListenAddr is the "host:port" to listen on; ":0" picks a free port.
	ListenAddr string
	// NodeID is our identity, announced in every handshake.
	NodeID uint64
	// MaxFrame is the largest payload sent or accepted (default 64 MiB).
	MaxFrame int
	// ConnsPerPeer is the number of outbound connections per peer
	// (default 2). Send picks one by lane.
	ConnsPerPeer int
	// QueueLen bounds the frames queued per peer (default 4096).
	QueueLen int
	// DialTimeout, HandshakeTimeout and WriteTimeout bound a TCP connect,
	// a handshake, and each write to a connection (defaults 2s, 2s, 10s).
	DialTimeout, HandshakeTimeout, WriteTimeout time.Duration
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
	// OnMessage receives every frame a peer sends us, with from set to the
	// node id the peer announced. It is called from the connection's
	// reader goroutine, so frames of one connection arrive in order and a
	// slow callee slows (only) that connection. The callee owns payload.
	// If nil, peer connections are refused.
	OnMessage func(from uint64, payload []byte)
	// OnDrained, if set, is called from a peer connection's reader
	// goroutine after OnMessage when no further whole frame is buffered:
	// the next read may wait for the network. A receiver can collect the
	// frames that arrived together and act on them at once.
	OnDrained func()
	// TLS, if set, puts accepted connections (TLS.Server) and peer dials
	// (TLS.Client) under TLS. A dialer refused at the handshake is
	// counted in Stats.TLSRefused by reason and logged; a dialer that
	// sent a plain hello is answered, in plain text, that TLS is required.
	TLS *TLS
	// MaxConnsPerIP caps the connections accepted from one remote IP
	// address at a time (default DefaultMaxConnsPerIP); more are closed
	// at once and counted in Stats.ConnsRefused. Every node of a
	// cluster on one host shares one address: keep the cap well above
	// ConnsPerPeer times the nodes, plus concurrent admin commands.
	MaxConnsPerIP int
	// OnRequest serves an admin request, each in its own goroutine. The
	// context is cancelled when the admin connection or the Transport
	// closes. A returned error is sent to the caller as its text. If nil,
	// admin connections are refused.
	OnRequest func(ctx context.Context, payload []byte) ([]byte, error)
}

func (c *Config) setDefaults() error {
	def := func(v *int, d int, name string) error {
		if *v < 0 {
			return fmt.Errorf("sheepdog/net: Config.%s is negative (%d)", name, *v)
		}
		if *v == 0 {
			*v = d
		}
		return nil
	}
	defDur := func(v *time.Duration, d time.Duration, name string) error {
		if *v < 0 {
			return fmt.Errorf("sheepdog/net: Config.%s is negative (%v)", name, *v)
		}
		if *v == 0 {
			*v = d
		}
		return nil
	}
	if err := errors.Join(
		def(&c.MaxFrame, DefaultMaxFrame, "MaxFrame"),
		def(&c.ConnsPerPeer, DefaultConnsPerPeer, "ConnsPerPeer"),
		def(&c.QueueLen, DefaultQueueLen, "QueueLen"),
		def(&c.MaxConnsPerIP, DefaultMaxConnsPerIP, "MaxConnsPerIP"),
		defDur(&c.DialTimeout, DefaultDialTimeout, "DialTimeout"),
		defDur(&c.HandshakeTimeout, DefaultHandshakeTimeout, "HandshakeTimeout"),
		defDur(&c.WriteTimeout, DefaultWriteTimeout, "WriteTimeout"),
	); err != nil {
		return err
	}
	if int64(c.MaxFrame) > math.MaxUint32 {
		return fmt.Errorf("sheepdog/net: Config.MaxFrame %d exceeds the 32-bit length field", c.MaxFrame)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Stats are cumulative counters of a Transport.
type Stats struct {
	FramesSent     uint64 // peer frames handed to a connection
	FramesDirect   uint64 // of FramesSent, written whole by a Batch's Flush, without the lane's writer
	FramesPartial  uint64 // frames a Batch's Flush wrote in part (the socket filled up); the writer finished them
	BytesSent      uint64 // payload bytes of FramesSent
	FramesReceived uint64 // peer frames delivered to OnMessage
	BytesReceived  uint64 // payload bytes of FramesReceived
	FramesDropped  uint64 // frames Send accepted but discarded (peer unreachable, connection failed)
	QueueFull      uint64 // Send calls refused with ErrQueueFull
	Malformed      uint64 // inbound connections closed for malformed input
	Dials          uint64 // outbound peer connection attempts
	DialFailures   uint64 // failed attempts (connect or handshake)
	Requests       uint64 // admin requests served
	// TLSRefused counts inbound connections refused at the TLS
	// handshake, by reason (every one of TLSRefusalReasons is a key).
	TLSRefused   map[string]uint64
	ConnsRefused uint64 // inbound connections closed at once: their IP address had MaxConnsPerIP
}

type counters struct {
	framesSent, bytesSent         atomic.Uint64
	framesDirect, framesPartial   atomic.Uint64
	framesReceived, bytesReceived atomic.Uint64
	framesDropped, queueFull      atomic.Uint64
	malformed                     atomic.Uint64
	dials, dialFailures           atomic.Uint64
	requests                      atomic.Uint64
	tlsRefused                    refusalCounters
	connsRefused                  atomic.Uint64
}

// Transport carries framed messages between sheep and serves admin
// requests on the same port. It is safe for concurrent use.
type Transport struct {
	cfg    Config
	log    *slog.Logger
	ln     gonet.Listener
	addr   string          // ln.Addr().String(), computed once
	source gonet.IP        // the listen IP, that peer dials come from (nil: any)
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool
	once   sync.Once
	wg     sync.WaitGroup // every goroutine the Transport starts
	stats  counters
	perIP  ipLimit
	// refusalLog and capLog rate-limit the warnings about refused
	// handshakes and capped addresses.
	refusalLog, capLog rateLog

	// peers maps node ids to outbound state. It is copied on write (under
	// mu) so that Send looks peers up without locking or allocating.
	peers atomic.Pointer[map[uint64]*peer]

	mu          sync.Mutex
	conns       map[gonet.Conn]struct{} // accepted connections
	connsClosed bool
}

// Listen starts a Transport listening on cfg.ListenAddr.
func Listen(cfg Config) (*Transport, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ln, err := gonet.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("sheepdog/net: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &Transport{
		cfg:    cfg,
		log:    cfg.Logger.With("node", cfg.NodeID),
		ln:     ln,
		addr:   ln.Addr().String(),
		source: sourceIP(ln.Addr()),
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[gonet.Conn]struct{}),
	}
	t.peers.Store(&map[uint64]*peer{})
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

// sourceIP is the address outgoing peer connections are made from: the
// listen address when it names one interface, so that a multi-homed host
// talks to its peers on the network it was told to use, and address-based
// firewall rules see each node under one address, whichever side dialed.
func sourceIP(a gonet.Addr) gonet.IP {
	ta, ok := a.(*gonet.TCPAddr)
	if !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		return nil
	}
	return ta.IP
}

// dialer makes peer connections to addr from t.source, where that can
// reach addr (a loopback source cannot reach another host).
func (t *Transport) dialer(addr string) gonet.Dialer {
	d := gonet.Dialer{Timeout: t.cfg.DialTimeout}
	if t.source == nil {
		return d
	}
	if t.source.IsLoopback() {
		host, _, err := gonet.SplitHostPort(addr)
		ip := gonet.ParseIP(host)
		if err != nil || (ip == nil && host != "localhost") || (ip != nil && !ip.IsLoopback()) {
			return d
		}
	}
	d.LocalAddr = &gonet.TCPAddr{IP: t.source}
	return d
}

// Addr returns the address the Transport listens on.
func (t *Transport) Addr() string { return t.addr }

// Stats returns a snapshot of the Transport's counters.
func (t *Transport) Stats() Stats {
	s := &t.stats
	return Stats{
		FramesSent:     s.framesSent.Load(),
		FramesDirect:   s.framesDirect.Load(),
		FramesPartial:  s.framesPartial.Load(),
		BytesSent:      s.bytesSent.Load(),
		FramesReceived: s.framesReceived.Load(),
		BytesReceived:  s.bytesReceived.Load(),
		FramesDropped:  s.framesDropped.Load(),
		QueueFull:      s.queueFull.Load(),
		Malformed:      s.malformed.Load(),
		Dials:          s.dials.Load(),
		DialFailures:   s.dialFailures.Load(),
		Requests:       s.requests.Load(),
		TLSRefused:     s.tlsRefused.snapshot(),
		ConnsRefused:   s.connsRefused.Load(),
	}
}

// Close stops listening, closes every connection, drops queued frames and
// waits for all goroutines of the Transport, including running OnMessage
// and OnRequest calls (so it must not be called from them). Closing twice
// is harmless.
func (t *Transport) Close() error {
	t.once.Do(func() {
		t.closed.Store(true)
		t.ln.Close()
		t.mu.Lock()
		peers := *t.peers.Load()
		t.mu.Unlock()
		for _, p := range peers {
			p.shutdown()
		}
		t.cancel()
		t.mu.Lock()
		t.connsClosed = true
		for c := range t.conns {
			c.Close()
		}
		t.mu.Unlock()
		t.wg.Wait()
	})
	return nil
}

func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.closed.Load() || errors.Is(err, gonet.ErrClosed) {
				return
			}
			// Typically EMFILE: back off rather than spin.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.log.Warn("accept failed; retrying", "listen", t.Addr(), "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		ip := remoteIP(c)
		if !t.perIP.acquire(ip, t.cfg.MaxConnsPerIP) {
			t.stats.connsRefused.Add(1)
			t.log.Log(context.Background(), t.capLog.level(), "connection refused: too many connections from its address",
				"remote", c.RemoteAddr().String(), "max", t.cfg.MaxConnsPerIP)
			c.Close()
			continue
		}
		c = nowait.Wrap(c)
		if !t.track(c) {
			t.perIP.release(ip)
			c.Close()
			return
		}
		go t.serveConn(c, ip)
	}
}

// track registers an accepted connection and accounts its goroutine; it
// reports false once Close has begun closing connections.
func (t *Transport) track(c gonet.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.connsClosed {
		return false
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

func (t *Transport) untrack(c gonet.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.Close()
}

// serveConn runs an accepted connection: TLS if configured, the
// handshake, then its role's loop.
func (t *Transport) serveConn(raw gonet.Conn, ip string) {
	defer t.wg.Done()
	defer t.perIP.release(ip)
	defer t.untrack(raw)
	remote := raw.RemoteAddr().String()
	c := raw
	if t.cfg.TLS != nil && t.cfg.TLS.Server != nil {
		tc, err := t.serverTLS(raw, remote)
		if err != nil {
			return
		}
		c = tc
	}
	br := bufio.NewReaderSize(c, bufSize)
	h, err := t.acceptHandshake(c, br)
	if err != nil {
		t.connError("handshake failed", remote, err)
		return
	}
	switch h.role {
	case rolePeer:
		err = t.servePeer(br, h.node)
	case roleAdmin:
		err = t.serveAdmin(c, br, remote)
	}
	t.connError(h.role.String()+" connection closed", remote, err, "from", h.node)
}

// connError logs why an inbound connection ends.
func (t *Transport) connError(msg, remote string, err error, attrs ...any) {
	attrs = append(attrs, "remote", remote, "err", err)
	switch {
	case errors.Is(err, ErrMalformed):
		t.stats.malformed.Add(1)
		t.log.Warn(msg+": malformed input", attrs...)
	case t.closed.Load():
	case errors.Is(err, io.EOF):
		t.log.Debug(msg, attrs...)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.log.Warn(msg+": timeout", attrs...)
	default:
		t.log.Info(msg, attrs...)
	}
}

// acceptHandshake reads the dialer's hello and answers it.
func (t *Transport) acceptHandshake(c gonet.Conn, br *bufio.Reader) (hello, error) {
	c.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	var b [helloSize]byte
	if n, err := io.ReadFull(br, b[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return hello{}, fmt.Errorf("%w: truncated hello (%d of %d bytes)", ErrMalformed, n, helloSize)
		}
		return hello{}, fmt.Errorf("read hello: %w", err)
	}
	if plainTLSClient(b[:]) {
		return hello{}, fmt.Errorf("%w: a TLS client dialed, and this node runs without TLS (start it with --tls-dir, or dial it without)", ErrMalformed)
	}
	h, err := parseHello(b[:])
	if err != nil {
		return hello{}, err
	}
	if h.version != ProtocolVersion {
		reason := fmt.Sprintf("protocol version %d not supported; node %d speaks version %d", h.version, t.cfg.NodeID, ProtocolVersion)
		t.answer(c, statusVersion, reason)
		return hello{}, fmt.Errorf("%w: remote node %d speaks version %d, we speak version %d", ErrVersion, h.node, h.version, ProtocolVersion)
	}
	var refuse string
	switch {
	case h.role == rolePeer && t.cfg.OnMessage == nil:
		refuse = "peer connections not served"
	case h.role == roleAdmin && t.cfg.OnRequest == nil:
		refuse = "admin requests not served"
	case h.role != rolePeer && h.role != roleAdmin:
		refuse = fmt.Sprintf("unknown role %d", uint8(h.role))
	}
	if refuse != "" {
		t.answer(c, statusRole, refuse)
		return hello{}, fmt.Errorf("%w: %s", ErrRejected, refuse)
	}
	if err := t.answer(c, statusOK, ""); err != nil {
		return hello{}, fmt.Errorf("write handshake answer: %w", err)
	}
	c.SetDeadline(time.Time{})
	return h, nil
}

func (t *Transport) answer(c gonet.Conn, status uint8, reason string) error {
	b := appendAck(make([]byte, 0, ackSize+len(reason)), ack{
		version: ProtocolVersion,
		status:  status,
		node:    t.cfg.NodeID,
		reason:  reason,
	})
	_, err := c.Write(b)
	return err
}

// servePeer delivers the frames of an inbound peer connection.
func (t *Transport) servePeer(br *bufio.Reader, from uint64) error {
	var hdr [headerSize]byte
	for {
		h, payload, err := readFrame(br, &hdr, t.cfg.MaxFrame)
		if err != nil {
			return err
		}
		if h.typ != typeMessage {
			return fmt.Errorf("%w: %s frame on a peer connection", ErrMalformed, h.typ)
		}
		t.stats.framesReceived.Add(1)
		t.stats.bytesReceived.Add(uint64(len(payload)))
		t.cfg.OnMessage(from, payload)
		if t.cfg.OnDrained != nil && !frameBuffered(br) {
			t.cfg.OnDrained()
		}
	}
}

// frameBuffered reports whether a whole frame is buffered in br, so that
// reading it cannot block.
func frameBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < headerSize {
		return false
	}
	h, err := br.Peek(headerSize)
	if err != nil {
		return false
	}
	return uint64(n) >= headerSize+uint64(binary.BigEndian.Uint32(h[8:12]))
}

// serveAdmin reads requests and answers each from its own goroutine.
func (t *Transport) serveAdmin(c gonet.Conn, br *bufio.Reader, remote string) error {
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	w := newFrameWriter(c, t.cfg.WriteTimeout)
	sem := make(chan struct{}, maxInflight)
	var hdr [headerSize]byte
	for {
		h, payload, err := readFrame(br, &hdr, t.cfg.MaxFrame)
		if err != nil {
			return err
		}
		if h.typ != typeRequest {
			return fmt.Errorf("%w: %s frame on an admin connection", ErrMalformed, h.typ)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		t.wg.Add(1)
		go func(id uint64, payload []byte) {
			defer t.wg.Done()
			defer func() { <-sem }()
			t.stats.requests.Add(1)
			resp, err := t.cfg.OnRequest(ctx, payload)
			typ := typeResponse
			if err != nil {
				typ, resp = typeError, []byte(err.Error())
			}
			if len(resp) > t.cfg.MaxFrame {
				if typ == typeError {
					resp = resp[:t.cfg.MaxFrame]
				} else {
					typ = typeError
					resp = fmt.Appendf(nil, "response of %d bytes exceeds the frame limit of %d", len(resp), t.cfg.MaxFrame)
				}
			}
			if err := w.write(typ, id, resp); err != nil {
				if !t.closed.Load() && ctx.Err() == nil {
					t.log.Info("admin response not sent; closing connection", "remote", remote, "err", err)
				}
				c.Close()
			}
		}(h.id, payload)
	}
}

// deadlineWriter sets a fresh write deadline before every write, so that
// a peer that stops reading fails the connection after the timeout
// instead of blocking the writer forever.
type deadlineWriter struct {
	c gonet.Conn
	d time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	if err := w.c.SetWriteDeadline(time.Now().Add(w.d)); err != nil {
		return 0, err
	}
	return w.c.Write(p)
}

// frameWriter serialises frames from concurrent goroutines onto one
// connection. The last of a group of concurrent writers flushes, so
// concurrent responses share system calls.
type frameWriter struct {
	pending atomic.Int32
	mu      sync.Mutex
	bw      *bufio.Writer
	hdr     [headerSize]byte
	err     error // sticky
}

func newFrameWriter(c gonet.Conn, timeout time.Duration) *frameWriter {
	return &frameWriter{bw: bufio.NewWriterSize(deadlineWriter{c, timeout}, bufSize)}
}

func (w *frameWriter) write(typ frameType, id uint64, payload []byte) error {
	w.pending.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.err
	if err == nil {
		err = writeFrame(w.bw, &w.hdr, typ, id, payload)
	}
	// Whoever sees no writer behind it flushes for everybody before it.
	if w.pending.Add(-1) == 0 && err == nil {
		err = w.bw.Flush()
	}
	if err != nil && w.err == nil {
		w.err = err
	}
	return err
}
