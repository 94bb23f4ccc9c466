package faults

import (
	"bufio"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// The proxy carries a connection until its link is dropped, holds what
// the drop covers (one direction only for a one-way drop) and delivers it
// at the heal; a node's hidden address counts as its public one.
func TestProxyDropsAndHeals(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns, err := NewNamespace(ctx, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	p := NewProxy(ns, testLogger(t))
	defer p.Close()
	const node, hidden, client, peer, peerHidden = "127.0.0.9", "127.0.2.9", "127.0.1.5", "127.0.0.7", "127.0.2.7"
	p.Alias(hidden, node)
	p.Alias(peerHidden, peer)
	// The node: an echo server that also reports what it received.
	ln, err := ns.Listen(ctx, hidden+":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						c.Close()
						return
					}
					got <- line
					_, _ = io.WriteString(c, line)
				}
			}()
		}
	}()
	if err := p.Forward(ctx, node+":7000", hidden+":7000"); err != nil {
		t.Fatal(err)
	}
	dial := func(from string) (net.Conn, *bufio.Reader) {
		c, err := ns.Dial(ctx, from, node+":7000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	expect := func(ch <-chan string, want string, what string) {
		t.Helper()
		select {
		case s := <-ch:
			if s != want {
				t.Fatalf("%s: got %q, want %q", what, s, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: nothing within 5s", what)
		}
	}
	nothing := func(ch <-chan string, what string) {
		t.Helper()
		select {
		case s := <-ch:
			t.Fatalf("%s: %q went through", what, s)
		case <-time.After(300 * time.Millisecond):
		}
	}
	echoes := func(r *bufio.Reader) <-chan string {
		ch := make(chan string, 16)
		go func() {
			for {
				s, err := r.ReadString('\n')
				if err != nil {
					return
				}
				ch <- s
			}
		}()
		return ch
	}

	c, r := dial(client)
	back := echoes(r)
	_, _ = io.WriteString(c, "a\n")
	expect(got, "a\n", "before any drop, the node")
	expect(back, "a\n", "before any drop, the client")

	must(t, p.Apply(ctx, []Link{{client, node}}))
	_, _ = io.WriteString(c, "b\n")
	nothing(got, "client -/-> node")
	must(t, p.Apply(ctx, nil))
	expect(got, "b\n", "after the heal, the node")
	expect(back, "b\n", "after the heal, the client")

	must(t, p.Apply(ctx, []Link{{node, client}}))
	_, _ = io.WriteString(c, "c\n")
	expect(got, "c\n", "one-way node -/-> client, the node")
	nothing(back, "node -/-> client")
	must(t, p.Apply(ctx, nil))
	expect(back, "c\n", "after the heal, the client")

	// A connection from the peer's hidden address is the peer's.
	must(t, p.Apply(ctx, []Link{{peer, node}}))
	pc, pr := dial(peerHidden)
	pback := echoes(pr)
	_, _ = io.WriteString(pc, "d\n")
	nothing(got, "peer (from its hidden address) -/-> node")
	_, _ = io.WriteString(c, "e\n")
	expect(got, "e\n", "the client, not covered by the peer's drop")
	must(t, p.Apply(ctx, nil))
	expect(got, "d\n", "after the heal, the node")
	expect(pback, "d\n", "after the heal, the peer")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
