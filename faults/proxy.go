package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
)

// Proxy is the network fault mechanism for kernels without nftables: a
// fault-injecting TCP proxy in front of every port of every node. A node
// listens on a hidden address (127.0.2.x) and advertises its public one
// (127.0.0.x), where the proxy listens; the node dials its peers from its
// hidden address, which the proxy maps back to the public one, so links
// between public addresses mean the same as with nftables. A dropped link
// holds the bytes of that direction (and the closing of it) until it
// heals: to both ends the connection looks stalled, as it does when a
// network drops packets. New connections are accepted during a drop and
// carry nothing the drop covers, as a SYN lost over and over would.
type Proxy struct {
	ns  *Namespace
	log *slog.Logger

	mu        sync.Mutex
	drops     map[Link]bool
	changed   chan struct{} // closed and replaced by every Apply
	aliases   map[string]string
	listeners []net.Listener
	conns     map[net.Conn]bool
	closed    bool
	wg        sync.WaitGroup
}

// NewProxy returns a proxy inside ns with no links dropped.
func NewProxy(ns *Namespace, log *slog.Logger) *Proxy {
	return &Proxy{ns: ns, log: log, drops: map[Link]bool{}, changed: make(chan struct{}), aliases: map[string]string{}, conns: map[net.Conn]bool{}}
}

func (p *Proxy) Mechanism() string { return "tcp-proxy" }

// Apply replaces the set of dropped links.
func (p *Proxy) Apply(_ context.Context, drops []Link) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drops = map[Link]bool{}
	for _, l := range drops {
		p.drops[l] = true
	}
	close(p.changed)
	p.changed = make(chan struct{})
	return nil
}

// Alias makes connections from hidden count as connections from public.
func (p *Proxy) Alias(hidden, public string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.aliases[hidden] = public
}

// Forward listens on front (inside the namespace) and relays every
// connection to back. Links to front's IP are the ones its rules name.
func (p *Proxy) Forward(ctx context.Context, front, back string) error {
	ln, err := p.ns.Listen(ctx, front)
	if err != nil {
		return fmt.Errorf("proxy listen on %s: %w", front, err)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return errors.New("proxy closed")
	}
	p.listeners = append(p.listeners, ln)
	p.mu.Unlock()
	dst, _, _ := net.SplitHostPort(front)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.relay(ctx, c, dst, back)
			}()
		}
	}()
	return nil
}

// relay carries one connection from a client (a node or a harness
// client) to back, each direction subject to its link.
func (p *Proxy) relay(ctx context.Context, in net.Conn, dst, back string) {
	srcIP, _, _ := net.SplitHostPort(in.RemoteAddr().String())
	p.mu.Lock()
	src := srcIP
	if pub, ok := p.aliases[srcIP]; ok {
		src = pub
	}
	p.mu.Unlock()
	// Dialed from the client's own address, so that the node sees each
	// client apart (per-address connection caps, logs).
	out, err := p.ns.Dial(ctx, srcIP, back)
	if err != nil {
		// The node is down: the client sees its connection end, as it
		// would see a refused connect.
		in.Close()
		return
	}
	if !p.track(in, out) {
		return
	}
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			in.Close()
			out.Close()
			p.untrack(in, out)
		})
	}
	done := make(chan struct{}, 2)
	go func() { p.pipe(out, in, Link{src, dst}); closeBoth(); done <- struct{}{} }()
	go func() { p.pipe(in, out, Link{dst, src}); closeBoth(); done <- struct{}{} }()
	<-done
	<-done
}

// pipe copies from r to w, holding each chunk, and the end of the stream,
// while link is dropped. It returns when either side fails, the stream
// ends, or the proxy closes.
func (p *Proxy) pipe(w io.Writer, r io.Reader, link Link) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if !p.pass(link) {
				return
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			p.pass(link)
			return
		}
	}
}

// pass waits until link is not dropped; false: the proxy closed.
func (p *Proxy) pass(link Link) bool {
	for {
		p.mu.Lock()
		closed, dropped, ch := p.closed, p.drops[link], p.changed
		p.mu.Unlock()
		if closed {
			return false
		}
		if !dropped {
			return true
		}
		<-ch
	}
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// Close stops every listener and connection and waits for the relays.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.changed)
	lns := p.listeners
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return nil
}

// String lists the dropped links, for logs.
func (p *Proxy) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ls []string
	for l := range p.drops {
		ls = append(ls, l.From+"->"+l.To)
	}
	slices.Sort(ls)
	return strings.Join(ls, " ")
}
