package net

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestBatchKeepsOrder mixes Batch and plain sends on the same lanes, with
// frames from a few bytes to several MiB (which the socket takes only in
// part, so a writer must finish them) and a receiver that sometimes stalls
// (so that direct writes find the socket full): every lane's frames must
// arrive complete and in order, and small frames to an idle lane must go
// out directly.
func TestBatchKeepsOrder(t *testing.T) {
	checkGoroutines(t)
	var in inbox
	var stall atomic.Bool
	recv := func(from uint64, p []byte) {
		if stall.Load() {
			time.Sleep(20 * time.Millisecond)
		}
		in.on(from, p)
	}
	a := newTransport(t, Config{NodeID: 1})
	b := newTransport(t, Config{NodeID: 2, OnMessage: recv})

	rng := rand.New(rand.NewPCG(7, 7))
	fill := func(p []byte) {
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
	}
	want := map[uint64][]digest{}
	seq := map[uint64]uint64{}
	send := func(batch *Batch, lane uint64, size int) {
		p := tagged(lane, seq[lane], size, fill)
		seq[lane]++
		want[lane] = append(want[lane], digestOf(p))
		var err error
		if batch != nil {
			err = batch.Send(2, b.Addr(), lane, p)
		} else {
			err = a.Send(2, b.Addr(), lane, p)
		}
		if err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	// Connect first: a lane without a connection hands its frames to
	// the writer, which dials.
	send(nil, 0, 16)
	in.waitN(t, 1)
	// Small socket buffers, so that the socket fills up and direct
	// writes are taken in part or not at all.
	shrinkBuffers(t, a, b)

	batch := a.NewBatch()
	total := 1
	for round := range 300 {
		stall.Store(round%10 == 5)
		for range 1 + rng.IntN(6) {
			size := 16 + rng.IntN(4096)
			switch rng.IntN(40) {
			case 0:
				size = 1<<20 + rng.IntN(3<<20)
			case 1:
				send(nil, uint64(rng.IntN(3)), size)
				total++
				continue
			}
			send(batch, uint64(rng.IntN(3)), size)
			total++
		}
		batch.Flush()
		if round%10 == 0 {
			// Let the writers go idle now and then, so that
			// direct writes get their chance.
			in.waitN(t, total)
		}
	}
	got := byLane(in.waitN(t, total), 1)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("per-lane streams (-sent +received):\n%s", diff)
	}
	s := a.Stats()
	if s.FramesSent != uint64(total) || s.FramesDropped != 0 {
		t.Errorf("stats = %+v, want %d frames sent and none dropped", s, total)
	}
	if s.FramesDirect == 0 {
		t.Errorf("no frame was written directly by Flush: %+v", s)
	}
}

// TestBatchToBrokenPeer: frames a Batch holds for a lane whose connection
// has died are not lost to the flush; the writer redials and delivers them.
func TestBatchToBrokenPeer(t *testing.T) {
	checkGoroutines(t)
	var in inbox
	a := newTransport(t, Config{NodeID: 1})
	b := newTransport(t, Config{NodeID: 2, OnMessage: in.on})
	if err := a.Send(2, b.Addr(), 0, tagged(0, 0, 16, nil)); err != nil {
		t.Fatal(err)
	}
	in.waitN(t, 1)
	// Break the inbound side: B closes every accepted connection.
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	batch := a.NewBatch()
	const n = 50
	for i := range n {
		if err := batch.Send(2, b.Addr(), 0, tagged(0, uint64(i+1), 100, nil)); err != nil {
			t.Fatal(err)
		}
		batch.Flush()
		time.Sleep(time.Millisecond)
	}
	// Frames written into the dying connection may be lost (as with
	// Send); the stream resumes, in order, on the new one.
	waitFor(t, "frames after the reconnect", func() bool {
		msgs := in.snapshot()
		_, last := untag(msgs[len(msgs)-1].payload)
		return last == n
	})
	var seqs []uint64
	for _, m := range in.snapshot() {
		_, s := untag(m.payload)
		seqs = append(seqs, s)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("frames out of order: %v", seqs)
		}
	}
}

// TestOnDrained: every frame is followed by an OnDrained call once no
// whole frame is left in the receive buffer, so a receiver that collects
// frames and acts in OnDrained never leaves one behind.
func TestOnDrained(t *testing.T) {
	checkGoroutines(t)
	var mu sync.Mutex
	var events []string // "m" per message, "d" per drain
	b := newTransport(t, Config{NodeID: 2,
		OnMessage: func(uint64, []byte) { mu.Lock(); events = append(events, "m"); mu.Unlock() },
		OnDrained: func() { mu.Lock(); events = append(events, "d"); mu.Unlock() }})
	a := newTransport(t, Config{NodeID: 1})
	batch := a.NewBatch()
	const bursts, per = 20, 30
	for i := range bursts {
		for j := range per {
			if err := batch.Send(2, b.Addr(), 0, tagged(0, uint64(i*per+j), 64+j*300, nil)); err != nil {
				t.Fatal(err)
			}
		}
		batch.Flush()
	}
	waitFor(t, "every frame and its drain", func() bool {
		mu.Lock()
		defer mu.Unlock()
		m := 0
		for _, e := range events {
			if e == "m" {
				m++
			}
		}
		return m == bursts*per && events[len(events)-1] == "d"
	})
	mu.Lock()
	defer mu.Unlock()
	if events[0] != "m" {
		t.Errorf("OnDrained before any frame: %v", events[:min(10, len(events))])
	}
	for i := 1; i < len(events); i++ {
		if events[i] == "d" && events[i-1] == "d" {
			t.Fatalf("OnDrained twice without a frame in between at %d", i)
		}
	}
}

func TestFrameBuffered(t *testing.T) {
	frame := rawFrame(typeMessage, 0, bytes.Repeat([]byte{7}, 100))
	for _, tc := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"empty", nil, false},
		{"part of a header", frame[:10], false},
		{"header only", frame[:headerSize], false},
		{"part of the payload", frame[:len(frame)-1], false},
		{"whole frame", frame, true},
		{"whole frame and more", append(append([]byte{}, frame...), frame[:5]...), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(bytes.NewReader(tc.in), 4096)
			br.Peek(len(tc.in)) // fill the buffer with everything there is
			if got := frameBuffered(br); got != tc.want {
				t.Errorf("frameBuffered = %v, want %v", got, tc.want)
			}
		})
	}
}

// shrinkBuffers sets small kernel buffers on the connections between a
// (sender) and b (receiver).
func shrinkBuffers(t *testing.T, a, b *Transport) {
	t.Helper()
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	for _, p := range *a.peers.Load() {
		p.mu.Lock()
		for _, l := range p.lanes {
			if c, ok := l.conn.(buffered); ok {
				c.SetWriteBuffer(64 << 10)
			}
		}
		p.mu.Unlock()
	}
	b.mu.Lock()
	for c := range b.conns {
		if c, ok := c.(buffered); ok {
			c.SetReadBuffer(64 << 10)
		}
	}
	b.mu.Unlock()
}
