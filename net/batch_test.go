package net

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	gonet "net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sheepdog-go/sheepdog/internal/nowait"
)

// TestBatchKeepsOrder mixes Batch sends (whole, or split in two parts at
// random) and plain sends on the same lanes, with frames from a few bytes
// to several MiB (which the socket takes only in part, so a writer must
// finish them) and a receiver that sometimes stalls (so that direct writes
// find the socket full): every lane's frames must arrive complete and in
// order, and small frames to an idle lane must go out directly.
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
		switch {
		case batch != nil && rng.IntN(2) == 0:
			// In two parts, split anywhere (either may be empty).
			k := rng.IntN(len(p) + 1)
			err = batch.SendSplit(2, b.Addr(), lane, p[:k], p[k:])
		case batch != nil:
			err = batch.Send(2, b.Addr(), lane, p)
		default:
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

// TestSplitFramesWrittenInPart: frames sent in two parts and larger than
// the socket can take while the receiver is busy are written in part by
// Flush, at every kind of boundary (no head, no data, a short head, the
// middle, anywhere), and the writer finishes them: each arrives whole,
// with a good checksum.
func TestSplitFramesWrittenInPart(t *testing.T) {
	checkGoroutines(t)
	var in inbox
	plugged, release := make(chan struct{}), make(chan struct{})
	recv := func(from uint64, p []byte) {
		in.on(from, p)
		if lane, _ := untag(p); lane == 1 {
			// A plug: hold up the reader, so that the socket fills.
			plugged <- struct{}{}
			<-release
		}
	}
	a := newTransport(t, Config{NodeID: 1})
	b := newTransport(t, Config{NodeID: 2, OnMessage: recv})
	if err := a.Send(2, b.Addr(), 0, tagged(0, 0, 16, nil)); err != nil {
		t.Fatal(err)
	}
	in.waitN(t, 1)
	shrinkBuffers(t, a, b)
	idle := func() bool {
		p := a.lookup(2)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.lanes[0].idle
	}

	rng := rand.New(rand.NewPCG(3, 3))
	fill := func(p []byte) {
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
	}
	want := []digest{digestOf(tagged(0, 0, 16, nil))}
	batch := a.NewBatch()
	const frames = 20
	for i := 1; i <= frames; i++ {
		// The plug goes on the frames' lane (connection); its tag says
		// it is a plug.
		if err := a.Send(2, b.Addr(), 0, tagged(1, uint64(i), 16, nil)); err != nil {
			t.Fatal(err)
		}
		<-plugged
		waitFor(t, "the lane's writer to go idle", idle)
		p := tagged(0, uint64(i), 512<<10+rng.IntN(1<<20), fill)
		want = append(want, digestOf(p))
		k := []int{0, len(p), 1 + rng.IntN(64), len(p) / 2, rng.IntN(len(p) + 1)}[i%5]
		if err := batch.SendSplit(2, b.Addr(), 0, p[:k], p[k:]); err != nil {
			t.Fatal(err)
		}
		batch.Flush()
		release <- struct{}{}
		in.waitN(t, 2*i+1)
	}
	got := byLane(in.waitN(t, 2*frames+1), 1)
	if diff := cmp.Diff(want, got[0]); diff != "" {
		t.Fatalf("frames (-sent +received):\n%s", diff)
	}
	if s := a.Stats(); s.FramesPartial < frames*3/4 {
		t.Fatalf("only %d of %d frames were written in part by Flush: %+v", s.FramesPartial, frames, s)
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
	set := func(c gonet.Conn, opt int) {
		rc := nowait.Raw(c)
		if rc == nil {
			t.Fatalf("no descriptor to shrink the buffers of a %T", c)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 64<<10)
		}); err != nil || serr != nil {
			t.Fatalf("shrinking socket buffers: %v %v", err, serr)
		}
	}
	n := 0
	for _, p := range *a.peers.Load() {
		p.mu.Lock()
		for _, l := range p.lanes {
			if l.conn != nil {
				set(l.conn, syscall.SO_SNDBUF)
				n++
			}
		}
		p.mu.Unlock()
	}
	b.mu.Lock()
	for c := range b.conns {
		set(c, syscall.SO_RCVBUF)
		n++
	}
	b.mu.Unlock()
	if n < 2 {
		t.Fatalf("shrank the buffers of %d sockets; want both ends of a connection", n)
	}
}

// TestUnwritten: the tail of a frame's parts after a partial write, with
// empty parts skipped and the scratch header's tail copied.
func TestUnwritten(t *testing.T) {
	hdr, head, data := []byte("HHHH"), []byte("ab"), []byte("xyz")
	tests := []struct {
		name  string
		parts [][]byte
		n     int
		want  [][]byte
	}{
		{"inside the header", [][]byte{hdr, head, data}, 1, [][]byte{[]byte("HHH"), head, data}},
		{"end of the header", [][]byte{hdr, head, data}, 4, [][]byte{head, data}},
		{"inside the head", [][]byte{hdr, head, data}, 5, [][]byte{[]byte("b"), data}},
		{"inside the data", [][]byte{hdr, head, data}, 7, [][]byte{[]byte("yz")}},
		{"empty head", [][]byte{hdr, nil, data}, 4, [][]byte{data}},
		{"empty data", [][]byte{hdr, head, nil}, 2, [][]byte{[]byte("HH"), head}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := unwritten(tt.parts, tt.n)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
			if tt.n < len(hdr) && &got[0][0] == &hdr[tt.n] {
				t.Fatal("the header's tail aliases the scratch header")
			}
		})
	}
}
