package net

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	gonet "net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// peer is the outbound state for one remote node: its address, a dial
// backoff shared by its lanes, and one lane per connection.
type peer struct {
	t      *Transport
	id     uint64
	queued atomic.Int64 // frames in the lanes' queues and batches

	mu       sync.Mutex
	addr     string
	closed   bool // Transport closed or peer forgotten
	down     bool // an outage was logged and has not ended
	backoff  time.Duration
	nextDial time.Time // no dial before this (zero: dial at once)
	lanes    []*lane
}

// lane is one outbound connection with its queue and writer goroutine.
// Fields marked (mu) are guarded by peer.mu; conn, dead and bw are only
// changed by the writer goroutine, holding peer.mu.
type lane struct {
	p       *peer
	q       []split         // (mu) frames waiting for the writer
	running bool            // (mu) a writer goroutine exists
	wake    chan struct{}   // wakes an idle writer; capacity 1
	conn    gonet.Conn      // current connection or nil
	raw     syscall.RawConn // conn's descriptor for direct writes (nil: none)
	dead    chan struct{}   // closed when conn's watcher sees it end
	idle    bool            // (mu) the writer waits for frames, with nothing buffered
	held    bool            // (mu) a Batch holds frames queued here until its Flush
	rest    [][]byte        // (mu) unwritten tail of a frame written directly; goes first
	spare   []split         // writer-owned: recycled queue backing array
	bw      *bufio.Writer   // writer-owned
	hdr     [headerSize]byte
}

func newPeer(t *Transport, id uint64) *peer {
	p := &peer{t: t, id: id, lanes: make([]*lane, t.cfg.ConnsPerPeer)}
	for i := range p.lanes {
		p.lanes[i] = &lane{p: p, wake: make(chan struct{}, 1)}
	}
	return p
}

func (t *Transport) lookup(id uint64) *peer { return (*t.peers.Load())[id] }

// getPeer returns the peer for id, creating it if needed; nil after Close.
func (t *Transport) getPeer(id uint64) *peer {
	if p := t.lookup(id); p != nil {
		return p
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return nil
	}
	old := *t.peers.Load()
	if p := old[id]; p != nil {
		return p
	}
	m := make(map[uint64]*peer, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	p := newPeer(t, id)
	m[id] = p
	t.peers.Store(&m)
	return p
}

// Send queues payload for node to, whose listen address is addr, on the
// connection chosen by lane % ConnsPerPeer: frames with the same lane
// arrive in the order they were sent (some may be missing after a
// connection failure, never reordered). Send never blocks on the network.
//
// The Transport keeps payload until it is written, so the caller must not
// modify it after Send returns.
//
// Send returns ErrQueueFull if the peer already has QueueLen frames
// queued (the frame is dropped; retransmit later), ErrFrameTooLarge, or
// ErrClosed. A nil error does not mean delivery: while the peer is
// unreachable its frames are dropped, and a failed connection loses the
// frames in flight. Redials are attempted by later Sends, with a backoff
// that doubles from 50ms up to 1s after each failed dial. If addr differs
// from the address last used for this peer, existing connections are
// closed and the next frames go to the new address.
func (t *Transport) Send(to uint64, addr string, lane uint64, payload []byte) error {
	return t.send(to, addr, lane, split{head: payload}, nil)
}

func (t *Transport) send(to uint64, addr string, lane uint64, payload split, b *Batch) error {
	if payload.len() > t.cfg.MaxFrame {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, payload.len(), t.cfg.MaxFrame)
	}
	for {
		if t.closed.Load() {
			return ErrClosed
		}
		p := t.getPeer(to)
		if p == nil {
			return ErrClosed
		}
		if err := p.send(addr, lane, payload, b); err != errForgotten {
			return err
		}
		// The peer was forgotten concurrently; start afresh.
	}
}

// errForgotten tells Send to look the peer up again.
var errForgotten = errors.New("peer forgotten")

func (p *peer) send(addr string, lane uint64, payload split, b *Batch) error {
	t := p.t
	l := p.lanes[lane%uint64(len(p.lanes))]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		if t.closed.Load() {
			return ErrClosed
		}
		return errForgotten
	}
	if addr != p.addr {
		p.setAddrLocked(addr)
	}
	if l.conn == nil && !l.running && !p.nextDial.IsZero() && time.Now().Before(p.nextDial) {
		// Unreachable and backing off: drop, as a failed dial would.
		t.stats.framesDropped.Add(1)
		return nil
	}
	if p.queued.Load() >= int64(t.cfg.QueueLen) {
		t.stats.queueFull.Add(1)
		return ErrQueueFull
	}
	p.queued.Add(1)
	l.q = append(l.q, payload)
	switch {
	case !l.running:
		l.running = true
		t.wg.Add(1)
		go l.run()
	case b != nil && l.idle:
		// Left for the batch's Flush, which writes it directly.
		if !l.held {
			l.held = true
			b.lanes = append(b.lanes, l)
		}
	case len(l.q) == 1:
		// The writer may be idle; a longer queue means it has not yet
		// looked at it and will see this frame anyway.
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// setAddrLocked switches the peer to a new address: redial at once and
// close connections to the old one (their writers then redial).
func (p *peer) setAddrLocked(addr string) {
	old := p.addr
	p.addr = addr
	p.backoff, p.nextDial = 0, time.Time{}
	if old == "" {
		return
	}
	p.t.log.Info("peer address changed", "peer", p.id, "old", old, "new", addr)
	for _, l := range p.lanes {
		if l.conn != nil {
			l.conn.Close()
		}
	}
}

// QueueLen returns the number of frames waiting to be written to node to.
func (t *Transport) QueueLen(to uint64) int {
	if p := t.lookup(to); p != nil {
		return int(p.queued.Load())
	}
	return 0
}

// Forget closes the connections to node to and discards its queued
// frames and state; use it when a node leaves the cluster. A later Send
// to it starts afresh.
func (t *Transport) Forget(to uint64) {
	t.mu.Lock()
	old := *t.peers.Load()
	p := old[to]
	if p == nil {
		t.mu.Unlock()
		return
	}
	m := make(map[uint64]*peer, len(old))
	for k, v := range old {
		if k != to {
			m[k] = v
		}
	}
	t.peers.Store(&m)
	t.mu.Unlock()
	p.shutdown()
}

// shutdown marks the peer closed, closes its connections and drops its
// queues; the writers notice and exit.
func (p *peer) shutdown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, l := range p.lanes {
		if l.conn != nil {
			l.conn.Close()
		}
		l.dropLocked()
		if l.running {
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
	}
}

// dropLocked discards the lane's queue and returns how many frames it held.
func (l *lane) dropLocked() int {
	n := len(l.q)
	if n == 0 {
		return 0
	}
	clear(l.q)
	l.q = l.q[:0]
	l.p.queued.Add(-int64(n))
	l.p.t.stats.framesDropped.Add(uint64(n))
	return n
}

// run is the lane's writer goroutine. It exists while the lane has frames
// to write or a live connection to watch.
func (l *lane) run() {
	p, t := l.p, l.p.t
	defer t.wg.Done()
	for {
		p.mu.Lock()
		switch {
		case p.closed:
			l.dropLocked()
			l.dropRestLocked()
			l.running = false
			c := l.conn
			l.conn, l.raw, l.dead = nil, nil, nil
			p.mu.Unlock()
			if c != nil {
				c.Close()
			}
			return

		case l.rest == nil && (len(l.q) == 0 || l.held && l.conn != nil):
			// Nothing to write, or only frames a Batch will write.
			if l.conn == nil {
				l.running = false
				p.mu.Unlock()
				return
			}
			dead := l.dead
			if l.bw.Buffered() > 0 {
				p.mu.Unlock()
				// The queue is momentarily empty: push the batch out.
				if err := l.bw.Flush(); err != nil {
					l.fail(err)
				}
				continue
			}
			l.idle = true
			p.mu.Unlock()
			select {
			case <-l.wake:
			case <-dead:
				l.fail(errors.New("connection closed by the remote side"))
			case <-t.ctx.Done():
			}
			p.mu.Lock()
			l.idle = false
			p.mu.Unlock()

		case l.conn == nil:
			if !l.connect() { // unlocks p.mu
				return
			}

		default:
			batch, rest := l.q, l.rest
			l.q, l.rest = l.spare[:0], nil
			p.mu.Unlock()
			err := l.writeRest(rest)
			if err == nil {
				err = l.writeBatch(batch)
			} else {
				l.p.queued.Add(-int64(len(batch)))
				l.p.t.stats.framesDropped.Add(uint64(len(batch)))
			}
			clear(batch)
			l.spare = batch[:0]
			if err != nil {
				l.fail(err)
			}
		}
	}
}

// writeRest writes the tail of a frame that a Batch wrote in part.
func (l *lane) writeRest(rest [][]byte) error {
	if rest == nil {
		return nil
	}
	l.p.queued.Add(-1)
	for _, b := range rest {
		if _, err := l.bw.Write(b); err != nil {
			l.p.t.stats.framesDropped.Add(1)
			return err
		}
	}
	l.p.t.stats.framesSent.Add(1)
	return nil
}

// dropRestLocked discards the tail of a partly written frame: it belonged
// to the connection that is going away.
func (l *lane) dropRestLocked() {
	if l.rest != nil {
		l.rest = nil
		l.p.queued.Add(-1)
		l.p.t.stats.framesDropped.Add(1)
	}
}

// writeBatch encodes frames into the buffered writer, which writes to the
// connection whenever it fills up.
func (l *lane) writeBatch(batch []split) error {
	var bytes uint64
	for i, payload := range batch {
		if err := writeSplitFrame(l.bw, &l.hdr, typeMessage, 0, payload); err != nil {
			lost := len(batch) - i
			l.p.queued.Add(-int64(lost))
			l.p.t.stats.framesDropped.Add(uint64(lost))
			l.p.t.stats.framesSent.Add(uint64(i))
			l.p.t.stats.bytesSent.Add(bytes)
			return err
		}
		l.p.queued.Add(-1)
		bytes += uint64(payload.len())
	}
	l.p.t.stats.framesSent.Add(uint64(len(batch)))
	l.p.t.stats.bytesSent.Add(bytes)
	return nil
}

// connect dials the peer for a lane that has frames but no connection. It
// is called with p.mu held and returns with it released; it reports
// whether the writer should keep running.
func (l *lane) connect() bool {
	p, t := l.p, l.p.t
	if !p.nextDial.IsZero() && time.Now().Before(p.nextDial) {
		l.dropLocked()
		l.running = false
		p.mu.Unlock()
		return false
	}
	addr := p.addr
	p.mu.Unlock()

	c, err := t.dialPeer(t.ctx, addr, p.id)

	p.mu.Lock()
	if err != nil {
		n := l.dropLocked()
		p.backoff = min(max(2*p.backoff, minBackoff), maxBackoff)
		p.nextDial = time.Now().Add(p.backoff)
		if !p.closed && !t.closed.Load() {
			if !p.down {
				p.down = true
				t.log.Warn("peer unreachable; dropping its frames until it answers",
					"peer", p.id, "addr", addr, "err", err, "dropped", n)
			} else {
				t.log.Debug("peer still unreachable", "peer", p.id, "addr", addr, "err", err,
					"dropped", n, "retry_in", p.backoff)
			}
		}
		l.running = false
		p.mu.Unlock()
		return false
	}
	if p.closed || addr != p.addr {
		// Closed, or the address changed while dialing: the loop
		// exits or dials the new address.
		p.mu.Unlock()
		c.Close()
		return true
	}
	l.conn = c
	l.raw = nowait.Raw(c)
	l.dead = make(chan struct{})
	w := deadlineWriter{c, t.cfg.WriteTimeout}
	if l.bw == nil {
		l.bw = bufio.NewWriterSize(w, bufSize)
	} else {
		l.bw.Reset(w)
	}
	p.backoff, p.nextDial = 0, time.Time{}
	if p.down {
		p.down = false
		t.log.Info("peer reachable again", "peer", p.id, "addr", addr)
	}
	t.wg.Add(1)
	go watch(t, c, l.dead)
	p.mu.Unlock()
	return true
}

// watch reads from an outbound peer connection, which the remote side
// never writes to after the handshake, to notice promptly when it closes.
func watch(t *Transport, c gonet.Conn, dead chan struct{}) {
	defer t.wg.Done()
	var b [1]byte
	c.Read(b[:])
	close(dead)
}

// fail drops the lane's connection; a non-empty queue is redialed by run.
func (l *lane) fail(err error) {
	p, t := l.p, l.p.t
	p.mu.Lock()
	c := l.conn
	l.conn, l.raw, l.dead = nil, nil, nil
	l.dropRestLocked()
	closed := p.closed
	p.mu.Unlock()
	if c == nil {
		return
	}
	c.Close()
	l.bw.Reset(io.Discard) // whatever was buffered is lost with the connection
	if !closed && !t.closed.Load() {
		t.log.Info("connection to peer lost", "peer", p.id, "remote", c.RemoteAddr().String(), "err", err)
	}
}

// dialPeer connects to the peer at addr and checks that it is node want.
func (t *Transport) dialPeer(ctx context.Context, addr string, want uint64) (gonet.Conn, error) {
	t.stats.dials.Add(1)
	c, err := t.dialPeerConn(ctx, addr, want)
	if err != nil {
		t.stats.dialFailures.Add(1)
	}
	return c, err
}

func (t *Transport) dialPeerConn(ctx context.Context, addr string, want uint64) (gonet.Conn, error) {
	d := t.dialer(addr)
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	c = nowait.Wrap(c)
	tlsOn := t.cfg.TLS != nil && t.cfg.TLS.Client != nil
	if tlsOn {
		if c, err = clientTLS(ctx, c, addr, t.cfg.TLS.Client, t.cfg.HandshakeTimeout); err != nil {
			return nil, err
		}
	}
	a, err := dialHandshake(ctx, c, hello{version: ProtocolVersion, role: rolePeer, node: t.cfg.NodeID}, t.cfg.HandshakeTimeout)
	if err != nil {
		c.Close()
		if tlsOn {
			err = describeTLS(addr, err)
		}
		return nil, fmt.Errorf("handshake with %s: %w", addr, err)
	}
	if a.node != want {
		c.Close()
		return nil, fmt.Errorf("%w: %s is node %d, not node %d", ErrWrongNode, addr, a.node, want)
	}
	return c, nil
}

// dialHandshake sends our hello on a fresh connection and checks the
// answer. The handshake is bounded by timeout and by ctx.
func dialHandshake(ctx context.Context, c gonet.Conn, h hello, timeout time.Duration) (ack, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	a, err := exchangeHello(c, h)
	if !stop() || ctx.Err() != nil {
		return ack{}, fmt.Errorf("handshake: %w", ctx.Err())
	}
	if err != nil {
		return ack{}, err
	}
	switch {
	case a.status == statusTLS:
		return ack{}, &TLSError{Addr: c.RemoteAddr().String(), Reason: a.reason, Err: ErrTLSRequired}
	case a.status == statusVersion:
		return ack{}, fmt.Errorf("%w: remote node %d speaks version %d, we speak version %d: %s",
			ErrVersion, a.node, a.version, h.version, a.reason)
	case a.status != statusOK:
		return ack{}, fmt.Errorf("%w by node %d: %s", ErrRejected, a.node, a.reason)
	case a.version != h.version:
		return ack{}, fmt.Errorf("%w: remote node %d speaks version %d, we speak version %d",
			ErrVersion, a.node, a.version, h.version)
	}
	c.SetDeadline(time.Time{})
	return a, nil
}

func exchangeHello(c gonet.Conn, h hello) (ack, error) {
	var b [helloSize]byte
	putHello(b[:], h)
	if _, err := c.Write(b[:]); err != nil {
		return ack{}, fmt.Errorf("write hello: %w", err)
	}
	return readAck(c)
}
