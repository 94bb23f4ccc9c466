package net

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	gonet "net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// digest identifies a payload compactly for comparisons.
type digest struct {
	Lane, Seq uint64
	Len       int
	Sum       uint32 // CRC-32 (IEEE), independent of the wire's CRC32C
}

func digestOf(p []byte) digest {
	lane, seq := untag(p)
	return digest{Lane: lane, Seq: seq, Len: len(p), Sum: crc32.ChecksumIEEE(p)}
}

// byLane groups the digests of messages from one sender by lane, in
// arrival order.
func byLane(msgs []message, from uint64) map[uint64][]digest {
	m := make(map[uint64][]digest)
	for _, msg := range msgs {
		if msg.from == from {
			d := digestOf(msg.payload)
			m[d.Lane] = append(m[d.Lane], d)
		}
	}
	return m
}

// sendStream sends perLane frames on each of lanes lanes, interleaved,
// with random sizes (mostly small, a few of several MiB), and returns what
// was sent grouped by lane.
func sendStream(t testing.TB, tr *Transport, to uint64, addr string, seed uint64, lanes, perLane int) map[uint64][]digest {
	rng := rand.New(rand.NewPCG(seed, seed))
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	want := make(map[uint64][]digest)
	for seq := range perLane {
		for lane := range uint64(lanes) {
			size := 16 + rng.IntN(8<<10)
			if rng.IntN(100) == 0 {
				size = 16 + rng.IntN(3<<20)
			}
			p := tagged(lane, uint64(seq), size, fill)
			want[lane] = append(want[lane], digestOf(p))
			sendRetry(t, tr, to, addr, lane, p)
		}
	}
	return want
}

func TestRoundTrip(t *testing.T) {
	checkGoroutines(t)
	var inA, inB inbox
	a := newTransport(t, Config{NodeID: 1, OnMessage: inA.on})
	b := newTransport(t, Config{NodeID: 2, OnMessage: inB.on})

	const lanes, perLane = 5, 200
	var wantAB, wantBA map[uint64][]digest
	var wg sync.WaitGroup
	wg.Go(func() { wantAB = sendStream(t, a, 2, b.Addr(), 1, lanes, perLane) })
	wg.Go(func() { wantBA = sendStream(t, b, 1, a.Addr(), 2, lanes, perLane) })
	wg.Wait()

	gotAB := byLane(inB.waitN(t, lanes*perLane), 1)
	gotBA := byLane(inA.waitN(t, lanes*perLane), 2)
	if diff := cmp.Diff(wantAB, gotAB); diff != "" {
		t.Errorf("A→B per-lane streams (-sent +received):\n%s", diff)
	}
	if diff := cmp.Diff(wantBA, gotBA); diff != "" {
		t.Errorf("B→A per-lane streams (-sent +received):\n%s", diff)
	}
	if s := a.Stats(); s.FramesSent != lanes*perLane || s.FramesReceived != lanes*perLane || s.FramesDropped != 0 {
		t.Errorf("A stats = %+v", s)
	}
}

func TestManyConcurrentSenders(t *testing.T) {
	checkGoroutines(t)
	const senders, receivers, goroutines, perGoroutine = 3, 3, 8, 150
	inboxes := make([]*inbox, receivers)
	recv := make([]*Transport, receivers)
	for i := range recv {
		inboxes[i] = &inbox{}
		recv[i] = newTransport(t, Config{NodeID: uint64(100 + i), OnMessage: inboxes[i].on, ConnsPerPeer: 3})
	}
	send := make([]*Transport, senders)
	for i := range send {
		send[i] = newTransport(t, Config{NodeID: uint64(1 + i), ConnsPerPeer: 3, QueueLen: 256})
	}

	var wg sync.WaitGroup
	for _, s := range send {
		for g := range uint64(goroutines) {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(s.cfg.NodeID, g))
				for seq := range uint64(perGoroutine) {
					for i, r := range recv {
						p := tagged(g, seq, 16+rng.IntN(2048), nil)
						sendRetry(t, s, uint64(100+i), r.Addr(), g, p)
					}
				}
			})
		}
	}
	wg.Wait()

	for i, in := range inboxes {
		msgs := in.waitN(t, senders*goroutines*perGoroutine)
		for _, s := range send {
			got := byLane(msgs, s.cfg.NodeID)
			for g := range uint64(goroutines) {
				seqs := make([]uint64, 0, perGoroutine)
				for _, d := range got[g] {
					seqs = append(seqs, d.Seq)
				}
				want := make([]uint64, perGoroutine)
				for k := range want {
					want[k] = uint64(k)
				}
				if diff := cmp.Diff(want, seqs); diff != "" {
					t.Errorf("receiver %d, sender %d, lane %d (-want +got):\n%s", i, s.cfg.NodeID, g, diff)
				}
			}
		}
	}
}

func TestPeerRestart(t *testing.T) {
	checkGoroutines(t)
	logger, logs := testLogger()
	a := newTransport(t, Config{NodeID: 1, Logger: logger})
	var in1 inbox
	b, err := Listen(Config{NodeID: 2, ListenAddr: "127.0.0.1:0", OnMessage: in1.on})
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	seq := uint64(0)
	next := func() []byte { seq++; return tagged(0, seq, 64, nil) }
	for range 10 {
		if err := a.Send(2, addr, 0, next()); err != nil {
			t.Fatal(err)
		}
	}
	in1.waitN(t, 10)
	b.Close()

	// While B is down, Send keeps accepting (and dropping) frames; the
	// redials fail with a growing backoff.
	waitFor(t, "several failed redials", func() bool {
		if err := a.Send(2, addr, 0, next()); err != nil && !errors.Is(err, ErrQueueFull) {
			t.Fatalf("Send while the peer is down: %v", err)
		}
		return a.Stats().DialFailures >= 3
	})
	if a.Stats().FramesDropped == 0 {
		t.Errorf("no frames counted as dropped during the outage")
	}

	var in2 inbox
	var b2 *Transport
	waitFor(t, "B to listen again on "+addr, func() bool {
		b2, err = Listen(Config{NodeID: 2, ListenAddr: addr, OnMessage: in2.on})
		return err == nil
	})
	t.Cleanup(func() { b2.Close() })

	waitFor(t, "A to reach B again", func() bool {
		if err := a.Send(2, addr, 0, next()); err != nil && !errors.Is(err, ErrQueueFull) {
			t.Fatalf("Send: %v", err)
		}
		return in2.len() > 0
	})
	first := seq
	const more = 50
	for range more {
		sendRetry(t, a, 2, addr, 0, next())
	}
	waitFor(t, "the frames sent after reconnecting", func() bool {
		msgs := in2.snapshot()
		_, last := untag(msgs[len(msgs)-1].payload)
		return last == seq
	})
	var got []uint64
	for _, m := range in2.snapshot() {
		if _, s := untag(m.payload); s > first {
			got = append(got, s)
		}
	}
	want := make([]uint64, 0, more)
	for s := first + 1; s <= seq; s++ {
		want = append(want, s)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("frames after reconnect (-want +got):\n%s", diff)
	}
	if n := logs.count("peer unreachable"); n != 1 {
		t.Errorf("outage logged %d times, want once\n%s", n, strings.Join(logs.lines(), "\n"))
	}
	if n := logs.count("peer reachable again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
}

func TestAddressChange(t *testing.T) {
	checkGoroutines(t)
	var in1, in2 inbox
	a := newTransport(t, Config{NodeID: 1})
	old := newTransport(t, Config{NodeID: 2, OnMessage: in1.on})
	moved := newTransport(t, Config{NodeID: 2, OnMessage: in2.on})

	for i := range 5 {
		sendRetry(t, a, 2, old.Addr(), uint64(i), []byte("old"))
	}
	in1.waitN(t, 5)
	// Both listeners stay up; the new address must win at once.
	for i := range 5 {
		sendRetry(t, a, 2, moved.Addr(), uint64(i), []byte("new"))
	}
	waitFor(t, "frames at the new address", func() bool {
		sendRetry(t, a, 2, moved.Addr(), 0, []byte("new"))
		return in2.len() > 0
	})
	for _, m := range in1.snapshot() {
		if string(m.payload) != "old" {
			t.Fatalf("old address received %q after the switch", m.payload)
		}
	}
}

func TestWrongNodeAtAddress(t *testing.T) {
	checkGoroutines(t)
	a := newTransport(t, Config{NodeID: 1})
	b := newTransport(t, Config{NodeID: 2, OnMessage: func(uint64, []byte) {}})
	_, err := a.dialPeer(context.Background(), b.Addr(), 3)
	if !errors.Is(err, ErrWrongNode) {
		t.Fatalf("dialPeer = %v, want ErrWrongNode", err)
	}
}

func TestVersionMismatch(t *testing.T) {
	checkGoroutines(t)
	logger, logs := testLogger()
	b := newTransport(t, Config{NodeID: 2, Logger: logger, OnMessage: func(uint64, []byte) {}, OnRequest: echo})

	t.Run("listener rejects", func(t *testing.T) {
		c := dialRaw(t, b.Addr(), 0, 0)
		if _, err := c.Write(rawHello(ProtocolVersion+1, rolePeer, 77)); err != nil {
			t.Fatal(err)
		}
		a, err := readAck(c)
		if err != nil {
			t.Fatal(err)
		}
		want := ack{version: ProtocolVersion, status: statusVersion, node: 2,
			reason: fmt.Sprintf("protocol version %d not supported; node 2 speaks version %d", ProtocolVersion+1, ProtocolVersion)}
		if diff := cmp.Diff(want, a, cmp.AllowUnexported(ack{})); diff != "" {
			t.Errorf("ack (-want +got):\n%s", diff)
		}
		expectClosed(t, c)
		waitFor(t, "the rejection to be logged", func() bool {
			return logs.count("handshake failed", "remote="+c.LocalAddr().String(), fmt.Sprintf("version %d", ProtocolVersion+1), fmt.Sprintf("version %d", ProtocolVersion)) == 1
		})
	})

	// Servers of another version, as seen by our dialers.
	rejecting := fakeServer(t, func(c gonet.Conn, _ <-chan struct{}) {
		io.ReadFull(c, make([]byte, helloSize))
		c.Write(appendAck(nil, ack{version: ProtocolVersion + 1, status: statusVersion, node: 9,
			reason: fmt.Sprintf("protocol version %d not supported; node 9 speaks version %d", ProtocolVersion, ProtocolVersion+1)}))
	})
	newer := fakeServer(t, func(c gonet.Conn, _ <-chan struct{}) {
		io.ReadFull(c, make([]byte, helloSize))
		c.Write(appendAck(nil, ack{version: ProtocolVersion + 1, status: statusOK, node: 9}))
	})
	a := newTransport(t, Config{NodeID: 1})
	dialers := []struct {
		name string
		dial func(addr string) error
	}{
		{"admin Dial", func(addr string) error {
			c, err := Dial(context.Background(), addr)
			if err == nil {
				c.Close()
			}
			return err
		}},
		{"peer dial", func(addr string) error {
			c, err := a.dialPeer(context.Background(), addr, 9)
			if err == nil {
				c.Close()
			}
			return err
		}},
	}
	for _, d := range dialers {
		for _, srv := range []struct{ name, addr string }{{"rejecting server", rejecting}, {"newer server", newer}} {
			t.Run(d.name+" to "+srv.name, func(t *testing.T) {
				err := d.dial(srv.addr)
				if !errors.Is(err, ErrVersion) {
					t.Fatalf("err = %v, want ErrVersion", err)
				}
				if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("speaks version %d", ProtocolVersion+1)) || !strings.Contains(msg, fmt.Sprintf("we speak version %d", ProtocolVersion)) {
					t.Errorf("error %q does not name both versions", msg)
				}
			})
		}
	}
}

func TestMalformedInput(t *testing.T) {
	checkGoroutines(t)
	logger, logs := testLogger()
	var in inbox
	const limit = 1 << 20
	b := newTransport(t, Config{NodeID: 2, Logger: logger, MaxFrame: limit, OnMessage: in.on, OnRequest: echo})
	a := newTransport(t, Config{NodeID: 1, ConnsPerPeer: 1})

	// A good, long-lived connection that must survive everything below.
	delivered := 0
	good := func() {
		t.Helper()
		delivered++
		sendRetry(t, a, 2, b.Addr(), 0, []byte("good"))
		waitFor(t, "the good connection to deliver", func() bool {
			n := 0
			for _, m := range in.snapshot() {
				if m.from == 1 {
					n++
				}
			}
			return n == delivered
		})
	}
	good()
	dials := a.Stats().Dials

	frame := rawFrame(typeMessage, 0, []byte("0123456789"))
	request := rawFrame(typeRequest, 1, []byte("0123456789"))
	rng := rand.New(rand.NewPCG(7, 7))
	garbage := make([]byte, 300)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	tests := []struct {
		name      string
		role      role // 0: no handshake
		in        []byte
		halfClose bool // end the stream after in (truncation)
		wantLog   string
		delivered int // frames from node 99 delivered before the bad one
	}{
		{name: "hello bad magic", in: corrupt(rawHello(ProtocolVersion, rolePeer, 99), func(b []byte) { b[0] = 'X' }), wantLog: "bad magic"},
		{name: "hello garbage", in: garbage, wantLog: "bad magic"},
		{name: "hello truncated", in: rawHello(ProtocolVersion, rolePeer, 99)[:9], halfClose: true, wantLog: "truncated hello (9 of 16 bytes)"},
		{name: "hello unknown role", in: rawHello(ProtocolVersion, 7, 99), wantLog: "unknown role 7"},
		{name: "bad magic", role: rolePeer, in: corrupt(frame, func(b []byte) { b[2] = 0 }), wantLog: "bad magic"},
		{name: "unknown type", role: rolePeer, in: corrupt(frame, func(b []byte) { b[4] = 0x42 }), wantLog: "unknown frame type 66"},
		{name: "unknown flags", role: rolePeer, in: corrupt(frame, func(b []byte) { b[5] = 1 }), wantLog: "unknown flags"},
		{name: "oversized length", role: rolePeer, in: corrupt(frame, func(b []byte) { b[8], b[9], b[10], b[11] = 0, 0x10, 0, 1 }), wantLog: "length 1048577 exceeds limit 1048576"},
		{name: "bad CRC", role: rolePeer, in: corrupt(frame, func(b []byte) { b[headerSize] ^= 0x20 }), wantLog: "bad CRC32C"},
		{name: "garbage", role: rolePeer, in: garbage, wantLog: "bad magic"},
		{name: "truncated header", role: rolePeer, in: frame[:11], halfClose: true, wantLog: "truncated header (11 of 24 bytes)"},
		{name: "truncated payload", role: rolePeer, in: frame[:headerSize+4], halfClose: true, wantLog: "truncated message frame (4 of 10 payload bytes)"},
		{name: "request on peer connection", role: rolePeer, in: request, wantLog: "request frame on a peer connection"},
		{name: "good then bad CRC", role: rolePeer, in: append(bytes.Clone(frame), corrupt(frame, func(b []byte) { b[13] ^= 1 })...), wantLog: "bad CRC32C", delivered: 1},
		{name: "admin bad CRC", role: roleAdmin, in: corrupt(request, func(b []byte) { b[14] ^= 1 }), wantLog: "bad CRC32C"},
		{name: "admin message frame", role: roleAdmin, in: frame, wantLog: "message frame on an admin connection"},
		{name: "admin oversized", role: roleAdmin, in: corrupt(request, func(b []byte) { b[8] = 0xff }), wantLog: "exceeds limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := in.len()
			c := dialRaw(t, b.Addr(), tt.role, 99)
			c.Write(tt.in) // may fail if the transport already hung up
			if tt.halfClose {
				c.(*gonet.TCPConn).CloseWrite()
			}
			expectClosed(t, c)
			remote := "remote=" + c.LocalAddr().String()
			waitFor(t, "the reason to be logged", func() bool { return logs.count(remote, tt.wantLog) == 1 })
			if got := in.len() - before; got != tt.delivered {
				t.Errorf("%d frames delivered from the bad connection, want %d", got, tt.delivered)
			}
			good()
		})
	}
	if got := a.Stats().Dials; got != dials {
		t.Errorf("the good connection was redialed (%d dials, want %d)", got, dials)
	}
	if got, want := b.Stats().Malformed, uint64(len(tests)-1); got != want { // the unknown role is a refusal
		t.Errorf("Malformed = %d, want %d", got, want)
	}
}

func TestBackPressure(t *testing.T) {
	checkGoroutines(t)
	// A peer that completes the handshake and then never reads.
	stuck := fakeServer(t, func(c gonet.Conn, done <-chan struct{}) {
		io.ReadFull(c, make([]byte, helloSize))
		c.Write(appendAck(nil, ack{version: ProtocolVersion, status: statusOK, node: 3}))
		<-done
	})
	var in inbox
	other := newTransport(t, Config{NodeID: 4, OnMessage: in.on})
	const queueLen = 64
	logger, logs := testLogger()
	a := newTransport(t, Config{NodeID: 1, QueueLen: queueLen, ConnsPerPeer: 1, Logger: logger,
		WriteTimeout: 100 * time.Millisecond})

	// Keep offering frames to the stuck peer until its writer has been
	// blocked long enough for the write deadline to fire. Meanwhile Send
	// must keep returning at once, with ErrQueueFull once the kernel
	// buffers and the queue are full, and the other peer must be served.
	payload := make([]byte, 64<<10)
	full, maxQueued, sentOther := 0, 0, 0
	deadline := time.Now().Add(patience)
	for logs.count("connection to peer lost", "peer=3", "i/o timeout") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the write to the stuck peer never timed out")
		}
		switch err := a.Send(3, stuck, 0, payload); {
		case errors.Is(err, ErrQueueFull):
			full++
			time.Sleep(time.Millisecond)
		case err != nil:
			t.Fatal(err)
		}
		maxQueued = max(maxQueued, a.QueueLen(3))
		sendRetry(t, a, 4, other.Addr(), 0, tagged(0, uint64(sentOther), 100, nil))
		sentOther++
	}
	if full == 0 || maxQueued != queueLen {
		t.Errorf("ErrQueueFull returned %d times, queue peaked at %d of %d", full, maxQueued, queueLen)
	}
	if got := a.Stats().QueueFull; got < uint64(full) { // sendRetry to the other peer may add some
		t.Errorf("Stats.QueueFull = %d, want at least %d", got, full)
	}
	msgs := in.waitN(t, sentOther)
	for i, m := range msgs {
		if _, seq := untag(m.payload); seq != uint64(i) {
			t.Fatalf("frame %d to the healthy peer has seq %d", i, seq)
		}
	}
}

func TestSendErrors(t *testing.T) {
	checkGoroutines(t)
	a := newTransport(t, Config{NodeID: 1, MaxFrame: 100})
	if err := a.Send(2, "127.0.0.1:1", 0, make([]byte, 101)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized Send = %v, want ErrFrameTooLarge", err)
	}
	a.Close()
	if err := a.Send(2, "127.0.0.1:1", 0, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestForget(t *testing.T) {
	checkGoroutines(t)
	var in inbox
	a := newTransport(t, Config{NodeID: 1})
	b := newTransport(t, Config{NodeID: 2, OnMessage: in.on})
	sendRetry(t, a, 2, b.Addr(), 0, []byte("x"))
	in.waitN(t, 1)
	a.Forget(2)
	if a.lookup(2) != nil || a.QueueLen(2) != 0 {
		t.Fatal("peer state survived Forget")
	}
	sendRetry(t, a, 2, b.Addr(), 0, []byte("y"))
	in.waitN(t, 2)
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{ListenAddr: "127.0.0.1:0", QueueLen: -1},
		{ListenAddr: "127.0.0.1:0", WriteTimeout: -1},
		{ListenAddr: "127.0.0.1:0", MaxFrame: 1 << 33},
		{ListenAddr: "no-such-host.invalid:x"},
	} {
		if tr, err := Listen(cfg); err == nil {
			tr.Close()
			t.Errorf("Listen(%+v) succeeded", cfg)
		}
	}
}

func echo(_ context.Context, p []byte) ([]byte, error) { return p, nil }

// Example-style sanity check of the documented defaults.
func TestDefaults(t *testing.T) {
	cfg := Config{}
	if err := cfg.setDefaults(); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(cfg.MaxFrame, cfg.ConnsPerPeer, cfg.QueueLen, cfg.DialTimeout, cfg.HandshakeTimeout, cfg.WriteTimeout)
	if want := "67108864 2 4096 2s 2s 10s"; got != want {
		t.Errorf("defaults = %s, want %s", got, want)
	}
}

func TestHandshakeTimeouts(t *testing.T) {
	checkGoroutines(t)
	logger, logs := testLogger()
	var in inbox
	b := newTransport(t, Config{NodeID: 2, Logger: logger, HandshakeTimeout: 50 * time.Millisecond, OnMessage: in.on})

	// A dialer that never says hello is cut off; the listener keeps serving.
	silent := dialRaw(t, b.Addr(), 0, 0)
	expectClosed(t, silent)
	waitFor(t, "the timeout to be logged", func() bool {
		return logs.count("handshake failed: timeout", "remote="+silent.LocalAddr().String()) == 1
	})
	a := newTransport(t, Config{NodeID: 1, HandshakeTimeout: 50 * time.Millisecond})
	sendRetry(t, a, 2, b.Addr(), 0, []byte("still serving"))
	in.waitN(t, 1)

	// A listener that never answers fails our handshake.
	accepted := make(chan struct{}, 4)
	mute := fakeServer(t, func(_ gonet.Conn, done <-chan struct{}) {
		accepted <- struct{}{}
		<-done
	})
	_, err := a.dialPeer(context.Background(), mute, 9)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("dialPeer to a mute listener = %v, want a deadline error", err)
	}
	<-accepted
	// A cancelled context interrupts a handshake too.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-accepted
		cancel()
	}()
	if _, err := Dial(ctx, mute); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial cancelled during the handshake = %v, want context.Canceled", err)
	}
}
