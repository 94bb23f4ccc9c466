package net

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	gonet "net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// patience bounds every wait in the tests. It is a safety net against
// hangs, not a performance assertion.
const patience = 30 * time.Second

// checkGoroutines fails the test if goroutines started during it are
// still running after its other cleanups. Call it first so that its
// cleanup runs last.
func checkGoroutines(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(patience)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before the test, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// waitFor polls cond until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// logBuf collects log output for assertions.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(l.buf.String(), "\n")
}

// count returns how many log lines contain all of subs.
func (l *logBuf) count(subs ...string) int {
	n := 0
	for _, line := range l.lines() {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

func testLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// newTransport starts a Transport on a loopback port, closed at cleanup.
func newTransport(t testing.TB, cfg Config) *Transport {
	t.Helper()
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	// Generous timeouts unless a test is about them: a loaded CI machine
	// must not turn into dropped frames.
	for _, d := range []*time.Duration{&cfg.DialTimeout, &cfg.HandshakeTimeout, &cfg.WriteTimeout} {
		if *d == 0 {
			*d = patience
		}
	}
	var logs *logBuf
	if cfg.Logger == nil {
		cfg.Logger, logs = testLogger()
	}
	tr, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tr.Close()
		if logs != nil && t.Failed() {
			t.Logf("log of node %d (%s):\n%s", cfg.NodeID, tr.Addr(), strings.Join(logs.lines(), "\n"))
		}
	})
	return tr
}

type message struct {
	from    uint64
	payload []byte
}

// inbox is an OnMessage that records what arrives.
type inbox struct {
	mu   sync.Mutex
	msgs []message
}

func (b *inbox) on(from uint64, payload []byte) {
	b.mu.Lock()
	b.msgs = append(b.msgs, message{from, payload})
	b.mu.Unlock()
}

func (b *inbox) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.msgs)
}

func (b *inbox) snapshot() []message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]message(nil), b.msgs...)
}

func (b *inbox) waitN(t testing.TB, n int) []message {
	t.Helper()
	deadline := time.Now().Add(patience)
	for b.len() < n {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %d messages; %d arrived", n, b.len())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return b.snapshot()
}

// sendRetry sends, retrying while the queue is full (the back-pressure
// protocol of Send).
func sendRetry(t testing.TB, tr *Transport, to uint64, addr string, lane uint64, payload []byte) {
	for {
		err := tr.Send(to, addr, lane, payload)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrQueueFull) {
			t.Errorf("Send to %d: %v", to, err)
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// tagged builds a payload that starts with lane and seq and is size bytes
// long (at least 16), filled from fill.
func tagged(lane, seq uint64, size int, fill func([]byte)) []byte {
	p := make([]byte, max(size, 16))
	binary.BigEndian.PutUint64(p[0:8], lane)
	binary.BigEndian.PutUint64(p[8:16], seq)
	if fill != nil {
		fill(p[16:])
	}
	return p
}

func untag(p []byte) (lane, seq uint64) {
	return binary.BigEndian.Uint64(p[0:8]), binary.BigEndian.Uint64(p[8:16])
}

// fakeServer accepts raw TCP connections and runs handle on each; done is
// closed at cleanup, when the connections are closed too.
func fakeServer(t testing.TB, handle func(c gonet.Conn, done <-chan struct{})) string {
	t.Helper()
	ln, err := gonet.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []gonet.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, done)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(done)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rawHello encodes a hello.
func rawHello(version uint16, r role, node uint64) []byte {
	b := make([]byte, helloSize)
	putHello(b, hello{version: version, role: r, node: node})
	return b
}

// rawFrame encodes a valid frame.
func rawFrame(typ frameType, id uint64, payload []byte) []byte {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	var hdr [headerSize]byte
	if err := writeFrame(w, &hdr, typ, id, payload); err != nil {
		panic(err)
	}
	if err := w.Flush(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// dialRaw opens a raw connection and, if r is non-zero, completes a
// handshake as that role.
func dialRaw(t testing.TB, addr string, r role, node uint64) gonet.Conn {
	t.Helper()
	c, err := gonet.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(patience))
	if r != 0 {
		if _, err := c.Write(rawHello(ProtocolVersion, r, node)); err != nil {
			t.Fatal(err)
		}
		a, err := readAck(c)
		if err != nil {
			t.Fatal(err)
		}
		if a.status != statusOK {
			t.Fatalf("handshake refused: status %d: %s", a.status, a.reason)
		}
	}
	return c
}

// expectClosed reads until the remote side closes the connection.
func expectClosed(t testing.TB, c gonet.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	_, err := io.Copy(io.Discard, c)
	var ne gonet.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection was not closed by the transport")
	}
	// nil (EOF) or a reset: either way the transport closed it.
}
