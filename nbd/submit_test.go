package nbd

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// submitVolume is a MemVolume that also takes requests without waiting
// (Submitter): each runs on a goroutine of its own, as a busy daemon
// answers them, or, with inline, before Submit returns, as a daemon that
// completes a request at once does; with hold, only once Drained is
// called (then inline), as a daemon that batches them does.
type submitVolume struct {
	*MemVolume
	inline    bool
	hold      bool
	held      []func()
	gate      func(op string, off uint64) error // optional: runs first; an error fails the request
	short     atomic.Bool                       // reads return one byte too few
	submitted atomic.Int64
	mu        sync.Mutex
	events    []string
	closed    chan struct{}
}

func (v *submitVolume) log(e string) {
	v.mu.Lock()
	v.events = append(v.events, e)
	v.mu.Unlock()
}

func (v *submitVolume) Events() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.events)
}

func (v *submitVolume) run(f func()) {
	v.submitted.Add(1)
	if v.hold {
		v.mu.Lock()
		v.held = append(v.held, f)
		v.mu.Unlock()
		return
	}
	if v.inline {
		f()
	} else {
		go f()
	}
}

func (v *submitVolume) SubmitWrite(p []byte, off uint64, fua bool, done func(error)) {
	v.run(func() {
		v.log(fmt.Sprintf("write %d", off))
		if v.gate != nil {
			if err := v.gate("write", off); err != nil {
				done(err)
				return
			}
		}
		done(v.MemVolume.WriteAt(context.Background(), p, off, fua))
	})
}

func (v *submitVolume) SubmitRead(off uint64, n uint32, done func([]byte, error)) {
	v.run(func() {
		if v.gate != nil {
			if err := v.gate("read", off); err != nil {
				done(nil, err)
				return
			}
		}
		p := make([]byte, n)
		err := v.MemVolume.ReadAt(context.Background(), p, off)
		if v.short.Load() {
			p = p[:n-1]
		}
		done(p, err)
	})
}

// Drained runs the requests held back.
func (v *submitVolume) Drained() {
	v.mu.Lock()
	held := v.held
	v.held = nil
	v.mu.Unlock()
	for _, f := range held {
		f()
	}
}

func (v *submitVolume) Close() error {
	v.log("close")
	if v.closed != nil {
		close(v.closed)
	}
	return v.MemVolume.Close()
}

func submitServer(t *testing.T, sv *submitVolume, size uint64) (string, *MemVolume) {
	mb := NewMemBackend()
	vol := mb.Add("disk", size)
	sv.closed = make(chan struct{})
	srv := &Server{Backend: &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		sv.MemVolume = v
		return sv
	}}}
	return startServer(t, srv), vol
}

// TestSubmitRoundTrip: through a Submitter volume, one request at a time
// (answered on the spot) and many in flight (answered by a writer), in
// both reply modes, every read returns what was written.
func TestSubmitRoundTrip(t *testing.T) {
	for _, mode := range []string{"goroutine", "inline", "hold"} {
		for _, structured := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/structured=%v", mode, structured), func(t *testing.T) {
				sv := &submitVolume{inline: mode == "inline", hold: mode == "hold"}
				addr, vol := submitServer(t, sv, 16<<20)
				c := connect(t, addr, "disk", structured, false)
				rng := rand.New(rand.NewPCG(3, 4))
				fill := func(n int) []byte {
					p := make([]byte, n)
					for i := range p {
						p[i] = byte(rng.Uint32())
					}
					return p
				}
				for _, n := range []int{1, 4096, 65537, 1 << 20, 4 << 20} {
					off := rng.Uint64N(vol.Size() - uint64(n))
					p := fill(n)
					c.writeAt(p, off)
					if got := c.read(off, uint32(n)); !bytes.Equal(got, p) {
						t.Fatalf("read of %d bytes at %d differs", n, off)
					}
				}
				// 48 writes in flight, then 48 reads of them.
				want := map[uint64][]byte{}
				handles := map[uint64]uint64{}
				for i := range 48 {
					off := uint64(i) * 65536
					want[off] = fill(4096 + i)
					handles[c.send(cmdWrite, 0, off, uint32(len(want[off])), want[off])] = off
				}
				for range 48 {
					r, err := c.recv()
					if err != nil || r.errno != 0 {
						t.Fatalf("write reply %+v, %v", r, err)
					}
				}
				for off, p := range want {
					handles[c.send(cmdRead, 0, off, uint32(len(p)), nil)] = off
				}
				for range 48 {
					r, err := c.recv()
					if err != nil || r.errno != 0 {
						t.Fatalf("read reply %+v, %v", r, err)
					}
					if off := handles[r.handle]; !bytes.Equal(r.data, want[off]) {
						t.Fatalf("read at %d returned other data", off)
					}
				}
				c.disconnect()
				if sv.submitted.Load() < 96 {
					t.Errorf("%d requests went through Submit, want every read and write", sv.submitted.Load())
				}
			})
		}
	}
}

// TestSubmitFullSocket: replies to reads the client does not collect yet
// fill the socket; the server keeps taking requests, the replies that did
// not fit wait for a writer, and all arrive whole and in a valid stream.
func TestSubmitFullSocket(t *testing.T) {
	for _, mode := range []string{"goroutine", "inline", "hold"} {
		t.Run(mode, func(t *testing.T) {
			sv := &submitVolume{inline: mode == "inline", hold: mode == "hold"}
			addr, vol := submitServer(t, sv, 64<<20)
			const n, size = 24, 2 << 20
			want := make([]byte, n*size)
			for i := range want {
				want[i] = byte(i / 4096)
			}
			vol.WriteAt(t.Context(), want, 0, false)
			c := connect(t, addr, "disk", true, false)
			offs := map[uint64]uint64{}
			for i := range n {
				offs[c.send(cmdRead, 0, uint64(i*size), size, nil)] = uint64(i * size)
			}
			for range n {
				r, err := c.recv()
				if err != nil || r.errno != 0 {
					t.Fatalf("reply %+v, %v", r, err)
				}
				off := offs[r.handle]
				if !bytes.Equal(r.data, want[off:off+size]) {
					t.Fatalf("read at %d returned other data", off)
				}
			}
			c.disconnect()
		})
	}
}

// TestSubmitHeldAtMaxInFlight: a client that pipelines more requests than
// MaxInFlight to a volume that holds requests until Drained: the server
// must say Drained before it waits for a request to finish, or nothing
// ever finishes.
func TestSubmitHeldAtMaxInFlight(t *testing.T) {
	sv := &submitVolume{hold: true}
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	sv.closed = make(chan struct{})
	addr := startServer(t, &Server{MaxInFlight: 4, Backend: &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		sv.MemVolume = v
		return sv
	}}})
	c := connect(t, addr, "disk", true, false)
	// All 32 requests go out in one write, so the server finds the next
	// one buffered each time and holds them.
	var all []byte
	c.mu.Lock()
	for i := range 32 {
		c.handle++
		c.pending[c.handle] = request{typ: cmdRead, handle: c.handle, offset: uint64(i) * 4096, length: 4096}
		all = append(all, requestBytes(magicRequest, cmdRead, 0, c.handle, uint64(i)*4096, 4096)...)
	}
	c.mu.Unlock()
	c.write(all)
	for range 32 {
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
	}
	c.disconnect()
}

// TestSubmitErrors: a failed request gets its NBD error and the
// connection goes on; a read that returns the wrong length is an EIO,
// never a malformed reply.
func TestSubmitErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			sv := &submitVolume{gate: func(op string, off uint64) error {
				if off == 8192 {
					return fmt.Errorf("disk full: %w", ErrNoSpace)
				}
				return nil
			}}
			addr, _ := submitServer(t, sv, 1<<20)
			c := connect(t, addr, "disk", structured, false)
			h := c.send(cmdWrite, 0, 8192, 4096, make([]byte, 4096))
			if r, err := c.recv(); err != nil || r.handle != h || r.errno != errnoNoSpace {
				t.Fatalf("failed write: %+v, %v; want ENOSPC", r, err)
			}
			c.writeAt([]byte("still serving"), 0)
			sv.short.Store(true)
			h = c.send(cmdRead, 0, 0, 4096, nil)
			if r, err := c.recv(); err != nil || r.handle != h || r.errno != errnoIO {
				t.Fatalf("short read: %+v, %v; want EIO", r, err)
			}
			sv.short.Store(false)
			if got := c.read(0, 13); string(got) != "still serving" {
				t.Fatalf("read %q", got)
			}
			c.disconnect()
		})
	}
}

// TestSubmitDisconnect: a client that hangs up while a submitted write is
// in the volume: the write completes, and Close comes after it.
func TestSubmitDisconnect(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	sv := &submitVolume{gate: func(op string, off uint64) error {
		close(entered)
		<-release
		return nil
	}}
	addr, vol := submitServer(t, sv, 1<<20)
	data := hangUpMidWrite(t, addr, entered, release, sv.closed)
	if diff := cmp.Diff([]string{"write 4096", "close"}, sv.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	got := make([]byte, len(data))
	vol.ReadAt(t.Context(), got, 4096)
	if !bytes.Equal(got, data) {
		t.Errorf("the write did not land")
	}
}
