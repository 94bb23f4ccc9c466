package nbd

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// trickle writes a valid handshake one byte at a time, every interval,
// until the server closes the connection; it returns when that was and
// how many bytes it got through.
func trickle(nc net.Conn, interval time.Duration) (time.Time, int) {
	msg := cat(clientFixedNoZeroes, option(optStructuredReply, nil), option(optList, nil))
	for len(msg) < 1<<16 {
		msg = append(msg, option(optList, nil)...)
	}
	go io.Copy(io.Discard, nc) // the greeting and replies
	for i := range msg {
		if _, err := nc.Write(msg[i : i+1]); err != nil {
			return time.Now(), i
		}
		time.Sleep(interval)
	}
	return time.Now(), len(msg)
}

// TestIdleAndTricklingClients: hundreds of connections that send nothing
// and one that trickles its handshake a byte at a time do not stop a
// normal client being served at once, and all of them are cut off at the
// handshake timeout.
func TestIdleAndTricklingClients(t *testing.T) {
	const (
		idle    = 300
		timeout = 2 * time.Second
	)
	ca := newTestCA(t, "cluster CA")
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"TLS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			mb := NewMemBackend()
			mb.Add("disk", 1<<20)
			srv := &Server{Backend: mb, HandshakeTimeout: timeout}
			if tc.tls {
				srv.TLSConfig = ca.serverConfig(t)
			}
			addr := startServer(t, srv)
			start := time.Now()

			var wg sync.WaitGroup
			closedAt := make([]time.Duration, idle)
			for i := range idle {
				nc, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatalf("idle connection %d: %v", i, err)
				}
				t.Cleanup(func() { nc.Close() })
				wg.Go(func() {
					nc.SetReadDeadline(time.Now().Add(hangGuard))
					io.Copy(io.Discard, nc) // until the server closes it
					closedAt[i] = time.Since(start)
				})
			}
			trickler, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { trickler.Close() })
			var trickleEnd time.Time
			var trickled int
			wg.Go(func() { trickleEnd, trickled = trickle(trickler, 10*time.Millisecond) })

			// A normal client meanwhile.
			time.Sleep(100 * time.Millisecond)
			served := time.Now()
			c := dial(t, addr)
			c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
			if tc.tls {
				if err := c.startTLS(ca.clientConfig(t, "vm", ca)); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.negotiate("disk", true, false); err != nil {
				t.Fatal(err)
			}
			c.writeAt([]byte("served"), 0)
			if got := string(c.read(0, 6)); got != "served" {
				t.Fatalf("read %q", got)
			}
			if d := time.Since(served); d > timeout/2 {
				t.Errorf("the normal client took %v to be served", d)
			}

			wg.Wait()
			for i, d := range closedAt {
				if d < timeout || d > timeout+hangGuard/2 {
					t.Fatalf("idle connection %d closed after %v, handshake timeout %v", i, d, timeout)
				}
			}
			if d := trickleEnd.Sub(start); d < timeout || trickled < 16 {
				t.Errorf("trickler cut off after %v and %d bytes", d, trickled)
			}
			// The normal client is past its handshake: no deadline.
			if got := string(c.read(0, 6)); got != "served" {
				t.Fatalf("read %q after the handshake timeout", got)
			}
			c.disconnect()
		})
	}
}

// TestMaxConns: beyond MaxConns a new connection closes the oldest one
// still in its handshake; when every connection is past its handshake the
// new one is closed at once.
func TestMaxConns(t *testing.T) {
	const limit = 4
	mb := NewMemBackend()
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		mb.Add(n, 64<<10)
	}
	ref := &refusals{}
	addr := startServer(t, &Server{Backend: mb, MaxConns: limit, Refused: ref.add})

	// limit idle connections, in order.
	var idle []*testClient
	for range limit {
		idle = append(idle, dial(t, addr))
	}
	// A normal client evicts the oldest idle one and is served.
	a := connect(t, addr, "a", true, false)
	a.read(0, 512)
	idle[0].expectClosed()
	ref.waitFor(t, "max-conns")
	// The other idle ones still negotiate.
	for i, n := range []string{"b", "c", "d"} {
		c := idle[i+1]
		c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
		if err := c.negotiate(n, true, false); err != nil {
			t.Fatalf("idle client %d: %v", i+1, err)
		}
		c.read(0, 512)
	}
	// All limit connections are in transmission: a new one is closed
	// before the greeting.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(hangGuard))
	if n, err := io.Copy(io.Discard, nc); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection beyond MaxConns: read %d bytes, %v", n, err)
	}
	ref.waitFor(t, "max-conns", "max-conns")
	a.read(0, 512) // established sessions are untouched

	// Once one leaves, a new client gets its place.
	a.disconnect()
	deadline := time.Now().Add(hangGuard)
	for {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		var g [18]byte
		nc.SetReadDeadline(time.Now().Add(hangGuard))
		_, err = io.ReadFull(nc, g[:])
		nc.Close()
		if err == nil {
			break
		}
		// The server may not have released a's slot yet.
		if time.Now().After(deadline) {
			t.Fatalf("no place after a client left: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e := connect(t, addr, "e", false, false)
	e.read(0, 512)
	e.disconnect()
	for _, c := range idle[1:] {
		c.disconnect()
	}
}
