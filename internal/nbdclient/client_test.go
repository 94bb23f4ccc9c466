package nbdclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// serve runs an nbd.Server over a MemBackend on loopback.
func serve(t *testing.T, b *nbd.MemBackend) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &nbd.Server{Backend: b, Logger: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string, opt Options) *Client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), nc, opt)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPipelinedWritesAndReads(t *testing.T) {
	const size = 32 << 20
	for _, tc := range []struct {
		name        string
		blockStatus bool
		inFlight    int
		req         int
	}{
		{"simple replies, 32 x 1 MiB", false, 32, 1 << 20},
		{"structured replies, 16 x 4 MiB", true, 16, 4 << 20},
		{"structured replies, 64 x 64 KiB", true, 64, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := nbd.NewMemBackend()
			vol := b.Add("disk", size)
			c := dial(t, serve(t, b), Options{Export: "disk", BlockStatus: tc.blockStatus})
			if c.Size() != size || c.ReadOnly() || c.CanBlockStatus() != tc.blockStatus {
				t.Fatalf("size %d read-only %v block status %v", c.Size(), c.ReadOnly(), c.CanBlockStatus())
			}
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(rand.Uint32())
			}
			// Writes: tc.inFlight at a time, completing in any order.
			sem := make(chan struct{}, tc.inFlight)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var errs []error
			for off := 0; off < size; off += tc.req {
				sem <- struct{}{}
				k := c.WriteAsync(want[off:off+tc.req], uint64(off), false)
				wg.Go(func() {
					defer func() { <-sem }()
					if err := k.Wait(); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size)
			var calls []*Call
			for off := 0; off < size; off += tc.req {
				calls = append(calls, c.ReadAsync(got[off:off+tc.req], uint64(off)))
				if len(calls) == tc.inFlight {
					if err := calls[0].Wait(); err != nil {
						t.Fatal(err)
					}
					calls = calls[1:]
				}
			}
			for _, k := range calls {
				if err := k.Wait(); err != nil {
					t.Fatal(err)
				}
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("read back differs at offset %d", i)
			}
			if err := c.Close(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			if vol.Attached() {
				t.Error("the export is still attached after Close returned")
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func TestBlockStatusZeroAndTrim(t *testing.T) {
	const mib = 1 << 20
	b := nbd.NewMemBackend()
	vol := b.Add("disk", 16*mib)
	c := dial(t, serve(t, b), Options{Export: "disk", BlockStatus: true})
	defer c.Close(5 * time.Second)
	data := bytes.Repeat([]byte{0xa5}, 2*mib)
	for _, off := range []uint64{2 * mib, 8 * mib} {
		if err := c.Write(data, off, true); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name string
		do   func() error
		want []Extent
	}{
		{"after two writes", func() error { return nil }, []Extent{
			{2 * mib, true, true}, {2 * mib, false, false}, {4 * mib, true, true}, {2 * mib, false, false}, {6 * mib, true, true}}},
		{"zero punching holes", func() error { return c.Zero(8*mib, mib, false) }, []Extent{
			{2 * mib, true, true}, {2 * mib, false, false}, {5 * mib, true, true}, {mib, false, false}, {6 * mib, true, true}}},
		{"zero keeping space", func() error { return c.Zero(12*mib, mib, true) }, []Extent{
			{2 * mib, true, true}, {2 * mib, false, false}, {5 * mib, true, true}, {mib, false, false}, {2 * mib, true, true}, {mib, false, false}, {3 * mib, true, true}}},
		{"trim", func() error { return c.Trim(2*mib, 2*mib) }, []Extent{
			{9 * mib, true, true}, {mib, false, false}, {2 * mib, true, true}, {mib, false, false}, {3 * mib, true, true}}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got, err := c.BlockStatus(0, 16*mib)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: extents (-want +got):\n%s", s.name, diff)
		}
	}
	// A range inside one extent is clipped to what was asked.
	got, err := c.BlockStatus(9*mib+4096, 8192)
	if err != nil || !cmp.Equal(got, []Extent{{8192, false, false}}) {
		t.Errorf("block status of 8 KiB inside data: %v %v", got, err)
	}
	if n := vol.AllocatedChunks(); n != 2*mib/nbd.MemChunkSize {
		t.Errorf("%d chunks allocated, want %d", n, 2*mib/nbd.MemChunkSize)
	}
	buf := make([]byte, mib)
	if err := c.Read(buf, 8*mib); err != nil || !bytes.Equal(buf, make([]byte, mib)) {
		t.Errorf("zeroed range does not read as zeros (err %v)", err)
	}
}

func TestErrors(t *testing.T) {
	b := nbd.NewMemBackend()
	b.Add("disk", 1<<20)
	ro := b.Add("ro", 1<<20)
	ro.SetReadOnly(true)
	addr := serve(t, b)

	for _, structured := range []bool{false, true} {
		c := dial(t, addr, Options{Export: "disk", BlockStatus: structured})
		err := c.Read(make([]byte, 4096), 1<<20)
		var ne *Error
		if !errors.As(err, &ne) || ne.Errno != 22 || ne.Cmd != "READ" {
			t.Errorf("structured=%v: read past the end: %v, want EINVAL", structured, err)
		}
		if structured && ne != nil && ne.Msg == "" {
			t.Errorf("a structured error reply carries no message: %v", err)
		}
		// The connection goes on after a failed request.
		if err := c.Write([]byte("hello"), 0, false); err != nil {
			t.Errorf("structured=%v: write after a failed read: %v", structured, err)
		}
		if !structured {
			if _, err := c.BlockStatus(0, 4096); !errors.Is(err, ErrNoBlockStatus) {
				t.Errorf("block status without structured replies: %v", err)
			}
		}
		if err := c.Close(5 * time.Second); err != nil {
			t.Error(err)
		}
		if err := c.Write([]byte("x"), 0, false); !errors.Is(err, ErrClosed) {
			t.Errorf("write after Close: %v, want ErrClosed", err)
		}
	}

	c := dial(t, addr, Options{Export: "ro"})
	if !c.ReadOnly() {
		t.Error("read-only export not announced read-only")
	}
	var ne *Error
	if err := c.Write([]byte("x"), 0, false); !errors.As(err, &ne) || ne.Errno != 1 {
		t.Errorf("write to a read-only export: %v, want EPERM", err)
	}
	c.Close(5 * time.Second)

	holder := dial(t, addr, Options{Export: "disk"})
	for _, tc := range []struct {
		export  string
		unknown bool
		policy  bool
	}{
		{"nosuch", true, false},
		{"disk", false, true}, // attached by holder
	} {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Dial(context.Background(), nc, Options{Export: tc.export, BlockStatus: true})
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Unknown() != tc.unknown || oe.Policy() != tc.policy || oe.Msg == "" {
			t.Errorf("export %q: %v (%#v), want unknown=%v policy=%v with a message", tc.export, err, oe, tc.unknown, tc.policy)
		}
	}
	holder.Close(5 * time.Second)
}

// TestConnectionLoss: calls in flight when the server goes away fail,
// and later calls fail at once, instead of hanging.
func TestConnectionLoss(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go fakeServer(ln, 4)
	c := dial(t, ln.Addr().String(), Options{Export: "x"})
	var calls []*Call
	for i := range 8 {
		calls = append(calls, c.WriteAsync(make([]byte, 4096), uint64(i)*4096, false))
	}
	for i, k := range calls {
		select {
		case <-k.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d still waiting after the server hung up", i)
		}
		if k.Wait() == nil {
			t.Errorf("call %d succeeded on a connection that was cut", i)
		}
	}
	if err := c.Flush(); err == nil {
		t.Error("flush after the connection was cut succeeded")
	}
	if err := c.Close(time.Second); err == nil {
		t.Error("Close of a cut connection reports no error")
	}
}

// fakeServer negotiates one export of 1 MiB (NBD_OPT_GO only), reads n
// requests without answering them and hangs up.
func fakeServer(ln net.Listener, n int) {
	nc, err := ln.Accept()
	if err != nil {
		return
	}
	defer nc.Close()
	be := binary.BigEndian
	g := be.AppendUint64(nil, magicNBD)
	g = be.AppendUint64(g, magicOption)
	g = be.AppendUint16(g, flagFixedNewstyle|flagNoZeroes)
	nc.Write(g)
	var flags [4]byte
	io.ReadFull(nc, flags[:])
	var h [16]byte
	io.ReadFull(nc, h[:])
	io.CopyN(io.Discard, nc, int64(be.Uint32(h[12:])))
	rep := func(typ uint32, data []byte) {
		b := be.AppendUint64(nil, magicOptionReply)
		b = be.AppendUint32(b, optGo)
		b = be.AppendUint32(b, typ)
		b = be.AppendUint32(b, uint32(len(data)))
		nc.Write(append(b, data...))
	}
	info := be.AppendUint16(nil, infoExport)
	info = be.AppendUint64(info, 1<<20)
	info = be.AppendUint16(info, 1)
	rep(repInfo, info)
	rep(repAck, nil)
	for range n {
		var r [28]byte
		if _, err := io.ReadFull(nc, r[:]); err != nil {
			return
		}
		if be.Uint16(r[6:]) == cmdWrite {
			io.CopyN(io.Discard, nc, int64(be.Uint32(r[24:])))
		}
	}
}
