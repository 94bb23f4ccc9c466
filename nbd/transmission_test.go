package nbd

import (
	"bytes"
	stdcmp "cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// alignedVolume announces a 512-byte minimum block size.
type alignedVolume struct{ *MemVolume }

func (alignedVolume) BlockSizes() (uint32, uint32, uint32) { return 512, 4096, 1 << 20 }

// TestRequestErrors sends invalid and edge-case requests and checks the
// error of each, then that the same connection still serves a good read.
// It runs with simple and with structured replies.
func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	const maxPayload = 64 << 10 // the smallest MaxPayload
	mb := NewMemBackend()
	mb.Add("disk", size)
	mb.Add("ro", size).SetReadOnly(true)
	mb.Add("slowzero", size).SetFastZero(false)
	mb.Add("aligned", size)
	tb := &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		if v.Name() == "aligned" {
			return alignedVolume{v}
		}
		return v
	}}
	addr := startServer(t, &Server{Backend: tb, MaxPayload: maxPayload})
	payload := func(n int) []byte { return bytes.Repeat([]byte{0x5a}, n) }

	tests := []struct {
		name    string
		export  string
		meta    bool // negotiate base:allocation (structured only)
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
		want    uint32 // want[structured] when wantSR differs
		wantSR  *uint32
	}{
		{name: "read beyond end", typ: cmdRead, off: size - 512, length: 1024, want: errnoInval},
		{name: "read offset beyond end", typ: cmdRead, off: size + 4096, length: 0, want: errnoInval},
		{name: "read offset overflow", typ: cmdRead, off: 1<<64 - 512, length: 1024, want: errnoInval},
		{name: "read at end, zero length", typ: cmdRead, off: size, length: 0},
		{name: "read zero length", typ: cmdRead, off: 4096, length: 0},
		{name: "write beyond end", typ: cmdWrite, off: size - 512, length: 1024, payload: payload(1024), want: errnoNoSpace},
		{name: "write zero length", typ: cmdWrite, off: 0, length: 0},
		{name: "write zeroes beyond end", typ: cmdWriteZeroes, off: size, length: 4096, want: errnoNoSpace},
		{name: "trim beyond end", typ: cmdTrim, off: size - 4096, length: 8192, want: errnoInval},
		{name: "cache beyond end", typ: cmdCache, off: size, length: 1, want: errnoInval},
		{name: "cache", typ: cmdCache, off: 0, length: 4096},
		{name: "trim zero length", typ: cmdTrim, off: 0, length: 0},
		{name: "write zeroes zero length", typ: cmdWriteZeroes, off: 0, length: 0},
		{name: "unknown command", typ: 42, off: 0, length: 4096, want: errnoInval},
		{name: "NBD_CMD_RESIZE is unknown", typ: 8, off: 0, length: 0, want: errnoInval},
		{name: "unknown flag", typ: cmdRead, flags: 1 << 9, off: 0, length: 512, want: errnoInval},
		{name: "NO_HOLE on write", typ: cmdWrite, flags: cmdFlagNoHole, off: 0, length: 512, payload: payload(512), want: errnoInval},
		{name: "REQ_ONE on read", typ: cmdRead, flags: cmdFlagReqOne, off: 0, length: 512, want: errnoInval},
		{name: "FAST_ZERO on trim", typ: cmdTrim, flags: cmdFlagFastZero, off: 0, length: 512, want: errnoInval},
		{name: "DF on read", typ: cmdRead, flags: cmdFlagDF, off: 0, length: maxPayload, want: errnoInval, wantSR: new(uint32)},
		{name: "FUA on read is accepted", typ: cmdRead, flags: cmdFlagFUA, off: 0, length: 512},
		{name: "FUA on write", typ: cmdWrite, flags: cmdFlagFUA, off: 0, length: 512, payload: payload(512)},
		{name: "flush with FUA", typ: cmdFlush, flags: cmdFlagFUA},
		{name: "flush with offset", typ: cmdFlush, off: 512, want: errnoInval},
		{name: "flush with length", typ: cmdFlush, length: 512, want: errnoInval},
		{name: "oversized read", typ: cmdRead, off: 0, length: maxPayload + 4096, want: errnoInval},
		{name: "oversized write", typ: cmdWrite, off: 0, length: maxPayload + 4096, payload: payload(maxPayload + 4096), want: errnoInval},
		{name: "oversized write zeroes is fine", typ: cmdWriteZeroes, off: 0, length: size},
		{name: "block status without meta context", typ: cmdBlockStatus, off: 0, length: 4096, want: errnoInval},
		{name: "block status beyond end", meta: true, typ: cmdBlockStatus, off: size - 512, length: 1024, want: errnoInval},
		{name: "block status zero length", meta: true, typ: cmdBlockStatus, off: 0, length: 0, want: errnoInval},
		{name: "block status with REQ_ONE", meta: true, typ: cmdBlockStatus, flags: cmdFlagReqOne, off: 0, length: 4096},
		{name: "block status with NO_HOLE", meta: true, typ: cmdBlockStatus, flags: cmdFlagNoHole, off: 0, length: 4096, want: errnoInval},
		{name: "write to read-only", export: "ro", typ: cmdWrite, off: 0, length: 512, payload: payload(512), want: errnoPerm},
		{name: "trim read-only", export: "ro", typ: cmdTrim, off: 0, length: 512, want: errnoPerm},
		{name: "write zeroes read-only", export: "ro", typ: cmdWriteZeroes, off: 0, length: 512, want: errnoPerm},
		{name: "read read-only", export: "ro", typ: cmdRead, off: 0, length: 512},
		{name: "flush read-only", export: "ro", typ: cmdFlush},
		{name: "fast zero refused", export: "slowzero", typ: cmdWriteZeroes, flags: cmdFlagFastZero, off: 0, length: 4096, want: errnoNotSup},
		{name: "slow zero without FAST_ZERO", export: "slowzero", typ: cmdWriteZeroes, flags: cmdFlagNoHole | cmdFlagFUA, off: 0, length: 4096},
		{name: "fast zero", typ: cmdWriteZeroes, flags: cmdFlagFastZero, off: 0, length: 4096},
		{name: "misaligned offset", export: "aligned", typ: cmdRead, off: 100, length: 512, want: errnoInval},
		{name: "misaligned length", export: "aligned", typ: cmdWrite, off: 0, length: 100, payload: payload(100), want: errnoInval},
		{name: "aligned", export: "aligned", typ: cmdWrite, off: 512, length: 1024, payload: payload(1024)},
		{name: "beyond volume max block", export: "aligned", typ: cmdRead, off: 0, length: 1<<20 + 512, want: errnoInval},
	}
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			parent := t
			conns := map[string]*testClient{}
			for _, tt := range tests {
				if tt.meta && !structured {
					continue
				}
				t.Run(tt.name, func(t *testing.T) {
					export := stdcmp.Or(tt.export, "disk")
					key := fmt.Sprintf("%s/%v", export, tt.meta)
					c := conns[key]
					if c == nil {
						// One connection per export serves all cases:
						// connections are not attached concurrently to
						// the same export.
						for k, o := range conns {
							if strings.HasPrefix(k, export+"/") {
								o.tb = t
								o.disconnect()
								delete(conns, k)
							}
						}
						// The connection outlives this subtest.
						c = connect(parent, addr, export, structured, tt.meta)
						conns[key] = c
					}
					c.tb = t
					want := tt.want
					if structured && tt.wantSR != nil {
						want = *tt.wantSR
					}
					r := c.do(tt.typ, tt.flags, tt.off, tt.length, tt.payload)
					if r.errno != want {
						t.Errorf("errno %d (%q), want %d", r.errno, r.msg, want)
					}
					if structured && r.errno != 0 && r.msg == "" {
						t.Errorf("structured error without a message")
					}
					if r.errno == 0 && tt.typ == cmdRead && len(r.data) != int(tt.length) {
						t.Errorf("read returned %d bytes, want %d", len(r.data), tt.length)
					}
					// The connection keeps serving.
					c.read(0, 512)
				})
			}
			for _, c := range conns {
				c.tb = t
				c.disconnect()
			}
		})
	}
}

// TestAbsurdWriteDropsConnection: a write payload beyond the discard limit
// is treated as denial of service; other connections are unaffected.
func TestAbsurdWriteDropsConnection(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	mb.Add("other", 1<<20)
	addr := startServer(t, &Server{Backend: mb})
	keep := connect(t, addr, "other", true, false)
	c := connect(t, addr, "disk", true, false)
	c.send(cmdWrite, 0, 0, 0xfffffff0, nil) // no payload follows: the server must not wait for it
	c.expectClosed()
	keep.read(0, 4096)
	keep.disconnect()
}

// TestBadMagic: a request with a bad magic drops that connection, and the
// server keeps serving new ones.
func TestBadMagic(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	mb.Add("other", 1<<20)
	addr := startServer(t, &Server{Backend: mb})
	other := connect(t, addr, "other", false, false)
	for _, structured := range []bool{false, true} {
		c := connect(t, addr, "disk", structured, false)
		c.writeAt([]byte("hello"), 0)
		c.write(requestBytes(0x12560953, cmdRead, 0, 1, 0, 512)) // historic request magic
		c.expectClosed()

		// The volume was detached: a new connection attaches it.
		c = connect(t, addr, "disk", structured, false)
		if got := c.read(0, 5); string(got) != "hello" {
			t.Errorf("read %q after reconnect", got)
		}
		c.disconnect()
	}
	other.read(0, 512)
	other.disconnect()
}

// TestReadWriteRoundTrip writes random data of assorted sizes and reads it
// back, in both reply modes.
func TestReadWriteRoundTrip(t *testing.T) {
	mb := NewMemBackend()
	vol := mb.Add("disk", 8<<20)
	addr := startServer(t, &Server{Backend: mb})
	rng := rand.New(rand.NewPCG(1, 2))
	for _, structured := range []bool{false, true} {
		c := connect(t, addr, "disk", structured, false)
		for _, n := range []int{1, 511, 4096, 65537, 1 << 20, 4 << 20} {
			off := rng.Uint64N(vol.Size() - uint64(n))
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			c.writeAt(p, off)
			if got := c.read(off, uint32(n)); !bytes.Equal(got, p) {
				t.Errorf("structured=%v: read of %d bytes at %d differs", structured, n, off)
			}
			direct := make([]byte, n)
			vol.ReadAt(t.Context(), direct, off)
			if !bytes.Equal(direct, p) {
				t.Errorf("structured=%v: volume content of %d bytes at %d differs", structured, n, off)
			}
		}
		c.disconnect()
	}
}

// TestBlockStatus checks base:allocation extents after writes, trims and
// zeroing.
func TestBlockStatus(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	addr := startServer(t, &Server{Backend: mb})
	c := connect(t, addr, "disk", true, true)
	c.writeAt(bytes.Repeat([]byte{1}, 64<<10), 0)           // data [0, 64K)
	c.writeAt(bytes.Repeat([]byte{2}, 8192), 128<<10)       // data [128K, 136K)
	c.do(cmdTrim, 0, 16<<10, 8192, nil)                     // hole [16K, 24K)
	c.do(cmdWriteZeroes, 0, 32<<10, 4096, nil)              // hole [32K, 36K)
	c.do(cmdWriteZeroes, cmdFlagNoHole, 128<<10, 4096, nil) // stays allocated

	const hz = stateHole | stateZero
	tests := []struct {
		name   string
		flags  uint16
		off    uint64
		length uint32
		want   []descriptor
	}{
		{"whole", 0, 0, 256 << 10, []descriptor{
			{16 << 10, 0}, {8 << 10, hz}, {8 << 10, 0}, {4 << 10, hz}, {28 << 10, 0}, {64 << 10, hz}, {8 << 10, 0}, {120 << 10, hz},
		}},
		{"REQ_ONE", cmdFlagReqOne, 0, 256 << 10, []descriptor{{16 << 10, 0}}},
		{"unaligned start", 0, 100, 16<<10 - 100, []descriptor{{16<<10 - 100, 0}}},
		{"inside a hole", 0, 200 << 10, 4096, []descriptor{{4096, hz}}},
		{"to the end", 0, 1<<20 - 8192, 8192, []descriptor{{8192, hz}}},
	}
	for _, tt := range tests {
		r := c.do(cmdBlockStatus, tt.flags, tt.off, tt.length, nil)
		if r.errno != 0 {
			t.Fatalf("%s: errno %d %s", tt.name, r.errno, r.msg)
		}
		if r.contextID != metaContextIDAllocation {
			t.Errorf("%s: context id %d", tt.name, r.contextID)
		}
		if diff := cmp.Diff(tt.want, r.descs, cmp.AllowUnexported(descriptor{})); diff != "" {
			t.Errorf("%s: descriptors (-want +got):\n%s", tt.name, diff)
		}
	}
	c.disconnect()
}

func TestDescriptors(t *testing.T) {
	const h, z = stateHole, stateZero
	tests := []struct {
		name   string
		exts   []Extent
		length uint32
		align  uint32
		reqOne bool
		want   []descriptor
	}{
		{"no extents", nil, 4096, 1, false, []descriptor{{4096, 0}}},
		{"zero-length extents", []Extent{{Length: 0}, {Length: 0, Hole: true}}, 4096, 1, false, []descriptor{{4096, 0}}},
		{"clipped", []Extent{{Length: 1 << 40, Hole: true, Zero: true}}, 4096, 1, false, []descriptor{{4096, h | z}}},
		{"short", []Extent{{Length: 1024, Hole: true}}, 4096, 1, false, []descriptor{{1024, h}}},
		{"merged equal", []Extent{{Length: 1024}, {Length: 1024}, {Length: 2048, Zero: true}}, 4096, 1, false, []descriptor{{2048, 0}, {2048, z}}},
		{"REQ_ONE", []Extent{{Length: 1024}, {Length: 3072, Zero: true}}, 4096, 1, true, []descriptor{{1024, 0}}},
		{"alignment merges", []Extent{{Length: 512, Hole: true, Zero: true}, {Length: 100, Zero: true}, {Length: 924, Hole: true, Zero: true}, {Length: 512, Hole: true}},
			2048, 512, false, []descriptor{{512, h | z}, {1024, z}, {512, h}}},
		{"unaligned tail dropped", []Extent{{Length: 1024}, {Length: 100, Hole: true}}, 2048, 512, false, []descriptor{{1024, 0}}},
		{"only unaligned", []Extent{{Length: 100, Hole: true}}, 2048, 512, false, []descriptor{{2048, 0}}},
	}
	for _, tt := range tests {
		got := descriptors(tt.exts, tt.length, tt.align, tt.reqOne)
		if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(descriptor{})); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}

// failVolume fails its operations with the configured error.
type failVolume struct {
	*MemVolume
	err error
}

func (v failVolume) ReadAt(ctx context.Context, p []byte, off uint64) error { return v.err }
func (v failVolume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	return v.err
}
func (v failVolume) Flush(ctx context.Context) error { return v.err }
func (v failVolume) Trim(ctx context.Context, off, length uint64, fua bool) error {
	return v.err
}
func (v failVolume) Zero(ctx context.Context, off, length uint64, f ZeroFlags) error {
	return v.err
}
func (v failVolume) Extents(ctx context.Context, off, length uint64) ([]Extent, error) {
	return nil, v.err
}

func TestErrno(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{fmt.Errorf("x: %w", ErrNoSpace), errnoNoSpace},
		{fmt.Errorf("x: %w", ErrPermission), errnoPerm},
		{fmt.Errorf("x: %w", ErrInvalid), errnoInval},
		{fmt.Errorf("x: %w", ErrNotSupported), errnoInval},
		{fmt.Errorf("x: %w", ErrNotFast), errnoNotSup},
		{syscall.EDQUOT, errnoNoSpace},
		{syscall.EFBIG, errnoNoSpace},
		{syscall.EROFS, errnoPerm},
		{syscall.EINVAL, errnoInval},
		{errors.New("disk on fire"), errnoIO},
		{context.DeadlineExceeded, errnoIO},
	}
	for _, tt := range tests {
		if got := errno(tt.err); got != tt.want {
			t.Errorf("errno(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// TestVolumeErrors checks that volume errors reach the client as NBD
// errors (with the message in structured mode), and the special handling
// of ErrNotSupported.
func TestVolumeErrors(t *testing.T) {
	var failWith atomic.Pointer[error]
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	tb := &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		return failVolume{v, *failWith.Load()}
	}}
	addr := startServer(t, &Server{Backend: tb})
	tests := []struct {
		err    error
		typ    uint16
		flags  uint16
		want   uint32
		wantOK bool
	}{
		{errors.New("disk on fire"), cmdRead, 0, errnoIO, false},
		{errors.New("disk on fire"), cmdFlush, 0, errnoIO, false},
		{fmt.Errorf("quota: %w", ErrNoSpace), cmdWrite, 0, errnoNoSpace, false},
		{fmt.Errorf("snapshot: %w", ErrPermission), cmdWrite, 0, errnoPerm, false},
		{fmt.Errorf("nope: %w", ErrInvalid), cmdBlockStatus, 0, errnoInval, false},
		{ErrNotSupported, cmdTrim, 0, 0, true}, // trim is a hint
		{ErrNotSupported, cmdWriteZeroes, cmdFlagFastZero, errnoNotSup, false},
		{ErrNotSupported, cmdWriteZeroes, 0, errnoInval, false},               // emulated with WriteAt, which fails the same way
		{fmt.Errorf("x: %w", ErrNotSupported), cmdRead, 0, errnoInval, false}, // ENOTSUP is reserved for fast zero
	}
	for _, structured := range []bool{false, true} {
		for _, tt := range tests {
			failWith.Store(&tt.err)
			c := connect(t, addr, "disk", structured, structured)
			var payload []byte
			if tt.typ == cmdWrite {
				payload = make([]byte, 4096)
			}
			length := uint32(4096)
			if tt.typ == cmdFlush {
				length = 0
			}
			r := c.do(tt.typ, tt.flags, 0, length, payload)
			if r.errno != tt.want {
				t.Errorf("structured=%v %v on %s: errno %d, want %d", structured, tt.err, cmdName(tt.typ), r.errno, tt.want)
			}
			if structured && !tt.wantOK && !strings.Contains(r.msg, tt.err.Error()) {
				t.Errorf("structured %v on %s: message %q lacks the error", tt.err, cmdName(tt.typ), r.msg)
			}
			c.disconnect()
		}
	}
}

// zeroEmulationVolume does not implement Zero.
type zeroEmulationVolume struct{ *MemVolume }

func (zeroEmulationVolume) Zero(ctx context.Context, off, length uint64, f ZeroFlags) error {
	return ErrNotSupported
}

func TestWriteZeroesEmulation(t *testing.T) {
	mb := NewMemBackend()
	vol := mb.Add("disk", 4<<20)
	vol.WriteAt(t.Context(), bytes.Repeat([]byte{9}, 4<<20), 0, false)
	tb := &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume { return zeroEmulationVolume{v} }}
	addr := startServer(t, &Server{Backend: tb})
	c := connect(t, addr, "disk", true, false)
	if r := c.do(cmdWriteZeroes, cmdFlagFastZero, 0, 4096, nil); r.errno != errnoNotSup {
		t.Fatalf("fast zero: errno %d, want ENOTSUP", r.errno)
	}
	if got := c.read(0, 4096); !bytes.Equal(got, bytes.Repeat([]byte{9}, 4096)) {
		t.Fatalf("failed fast zero changed the data")
	}
	if r := c.do(cmdWriteZeroes, 0, 1000, 3<<20, nil); r.errno != 0 {
		t.Fatalf("write zeroes: errno %d %s", r.errno, r.msg)
	}
	want := bytes.Repeat([]byte{9}, 4<<20)
	clear(want[1000 : 1000+3<<20])
	if got := c.read(0, 4<<20); !bytes.Equal(got, want) {
		t.Fatalf("emulated write zeroes wrote the wrong bytes")
	}
	c.disconnect()
}

// gateVolume blocks selected operations until released and records the
// order of events.
type gateVolume struct {
	*MemVolume
	mu     sync.Mutex
	events []string
	// block, if set, is called at the start of ReadAt and WriteAt.
	block  func(op string, off uint64)
	ctxErr error // ctx.Err() seen at the end of the last WriteAt
	closed chan struct{}
}

func (v *gateVolume) log(e string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.events = append(v.events, e)
}

func (v *gateVolume) Events() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.events)
}

func (v *gateVolume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	if v.block != nil {
		v.block("read", off)
	}
	return v.MemVolume.ReadAt(ctx, p, off)
}

func (v *gateVolume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	v.log(fmt.Sprintf("write %d start", off))
	if v.block != nil {
		v.block("write", off)
	}
	err := v.MemVolume.WriteAt(ctx, p, off, fua)
	v.mu.Lock()
	v.ctxErr = ctx.Err()
	v.mu.Unlock()
	v.log(fmt.Sprintf("write %d done", off))
	return err
}

func (v *gateVolume) Close() error {
	v.log("close")
	close(v.closed)
	return v.MemVolume.Close()
}

func gateServer(t *testing.T, srv *Server, gv *gateVolume) (string, *MemVolume) {
	mb := NewMemBackend()
	vol := mb.Add("disk", 1<<20)
	gv.closed = make(chan struct{})
	srv.Backend = &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		gv.MemVolume = v
		return gv
	}}
	return startServer(t, srv), vol
}

// TestOutOfOrderReplies: a slow request does not hold back a later fast
// one.
func TestOutOfOrderReplies(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			entered, release := make(chan struct{}), make(chan struct{})
			gv := &gateVolume{block: func(op string, off uint64) {
				if off == 0 {
					close(entered)
					<-release
				}
			}}
			addr, _ := gateServer(t, &Server{}, gv)
			c := connect(t, addr, "disk", structured, false)
			slow := c.send(cmdRead, 0, 0, 4096, nil)
			<-entered
			fast := c.send(cmdRead, 0, 8192, 4096, nil)
			r, err := c.recv()
			if err != nil || r.handle != fast {
				t.Fatalf("first reply: handle %d err %v, want the fast request %d", r.handle, err, fast)
			}
			close(release)
			r, err = c.recv()
			if err != nil || r.handle != slow {
				t.Fatalf("second reply: handle %d err %v, want the slow request %d", r.handle, err, slow)
			}
			c.disconnect()
		})
	}
}

// TestMaxInFlight: no more than MaxInFlight requests of a connection run
// at once.
func TestMaxInFlight(t *testing.T) {
	const limit, total = 3, 20
	var cur, peak atomic.Int32
	entered, release := make(chan struct{}, total), make(chan struct{})
	gv := &gateVolume{block: func(op string, off uint64) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		entered <- struct{}{}
		<-release
		cur.Add(-1)
	}}
	addr, _ := gateServer(t, &Server{MaxInFlight: limit}, gv)
	c := connect(t, addr, "disk", true, false)
	for i := range total {
		c.send(cmdRead, 0, uint64(i)*4096, 4096, nil)
	}
	for range limit {
		<-entered
	}
	close(release)
	for range total {
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("reply %+v, %v", r, err)
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("peak concurrency %d, want %d", p, limit)
	}
	c.disconnect()
}

// TestDisconnectMidWrite: when the client hangs up while a write is in
// the volume, the write completes with a live context and Close follows.
func TestDisconnectMidWrite(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	gv := &gateVolume{block: func(op string, off uint64) {
		close(entered)
		<-release
	}}
	addr, vol := gateServer(t, &Server{}, gv)
	data := hangUpMidWrite(t, addr, entered, release, gv.closed)
	if diff := cmp.Diff([]string{"write 4096 start", "write 4096 done", "close"}, gv.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if gv.ctxErr != nil {
		t.Errorf("WriteAt context was cancelled: %v", gv.ctxErr)
	}
	got := make([]byte, len(data))
	vol.ReadAt(t.Context(), got, 4096)
	if !bytes.Equal(got, data) {
		t.Errorf("the write did not land")
	}
}

// hangUpMidWrite sends a 64 KiB FUA write at offset 4096, hangs up once
// the volume has started it (entered), lets it finish (release) and waits
// for the volume to be closed; it returns the data written.
func hangUpMidWrite(t *testing.T, addr string, entered, release, closed chan struct{}) []byte {
	t.Helper()
	c := connect(t, addr, "disk", true, false)
	data := bytes.Repeat([]byte{0xee}, 64<<10)
	c.send(cmdWrite, cmdFlagFUA, 4096, uint32(len(data)), data)
	<-entered
	c.nc.Close()
	close(release)
	<-closed
	return data
}

// TestDisconnectMidPayload: a write whose payload never fully arrives is
// not started; the volume is closed.
func TestDisconnectMidPayload(t *testing.T) {
	gv := &gateVolume{}
	addr, vol := gateServer(t, &Server{}, gv)
	c := connect(t, addr, "disk", false, false)
	c.write(requestBytes(magicRequest, cmdWrite, 0, 1, 0, 8192))
	c.write(bytes.Repeat([]byte{1}, 4096))
	c.nc.Close()
	<-gv.closed
	if diff := cmp.Diff([]string{"close"}, gv.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if n := vol.AllocatedChunks(); n != 0 {
		t.Errorf("%d chunks allocated", n)
	}
}

// TestDiscWaitsForInFlight: after NBD_CMD_DISC the server finishes and
// answers outstanding requests before closing.
func TestDiscWaitsForInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	gv := &gateVolume{block: func(op string, off uint64) {
		close(entered)
		<-release
	}}
	addr, _ := gateServer(t, &Server{}, gv)
	c := connect(t, addr, "disk", false, false)
	h := c.send(cmdWrite, 0, 0, 4096, make([]byte, 4096))
	<-entered
	c.send(cmdDisc, 0, 0, 0, nil)
	close(release)
	r, err := c.recv()
	if err != nil || r.handle != h || r.errno != 0 {
		t.Fatalf("reply to the in-flight write: %+v, %v", r, err)
	}
	c.expectClosed()
	<-gv.closed
	if diff := cmp.Diff([]string{"write 0 start", "write 0 done", "close"}, gv.Events()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

// TestShutdown: cancelling Serve's context lets an in-flight request
// finish and reply, then closes connections and volumes, and Serve
// returns nil.
func TestShutdown(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	gv := &gateVolume{block: func(op string, off uint64) {
		close(entered)
		<-release
	}, closed: make(chan struct{})}
	mb := NewMemBackend()
	mb.Add("disk", 1<<20)
	mb.Add("idle", 1<<20)
	srv := &Server{Logger: testLogger(t), Backend: &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		if v.Name() == "disk" {
			gv.MemVolume = v
			return gv
		}
		return v
	}}}
	ln := listen(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	idle := connect(t, ln.Addr().String(), "idle", true, false)
	c := connect(t, ln.Addr().String(), "disk", true, false)
	h := c.send(cmdWrite, 0, 0, 4096, make([]byte, 4096))
	<-entered
	cancel()
	close(release)
	r, err := c.recv()
	if err != nil || r.handle != h || r.errno != 0 {
		t.Fatalf("reply to the in-flight write: %+v, %v", r, err)
	}
	c.expectClosed()
	idle.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	<-gv.closed
	if vol, _ := mb.Open(t.Context(), "idle"); vol == nil {
		t.Errorf("idle volume still attached after shutdown")
	}
}

// TestHandshakeShutdown: a connection stuck in the handshake is closed by
// shutdown.
func TestHandshakeShutdown(t *testing.T) {
	mb := NewMemBackend()
	srv := &Server{Logger: testLogger(t), Backend: mb}
	ln := listen(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := dial(t, ln.Addr().String())
	cancel()
	c.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestServeConnReturnsProtocolErrors(t *testing.T) {
	mb := NewMemBackend()
	srv := &Server{Logger: testLogger(t), Backend: mb}
	client, server := netPipe(t)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeConn(t.Context(), server) }()
	go io.Copy(io.Discard, client)
	client.Write([]byte{0, 0, 0, 0}) // client flags without FIXED_NEWSTYLE
	err := <-errc
	var pe *protocolError
	if !errors.As(err, &pe) {
		t.Fatalf("ServeConn returned %v, want a protocol violation", err)
	}
}

// TestServeListenerFailure: when Accept fails, Serve shuts the open
// connections down and returns the error.
func TestServeListenerFailure(t *testing.T) {
	mb := NewMemBackend()
	vol := mb.Add("disk", 1<<20)
	srv := &Server{Logger: testLogger(t), Backend: mb}
	ln := listen(t)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(t.Context(), ln) }()
	c := connect(t, ln.Addr().String(), "disk", false, false)
	ln.Close()
	if err := <-done; err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve returned %v, want the accept error", err)
	}
	c.expectClosed()
	if vol.Attached() {
		t.Errorf("volume still attached after Serve returned")
	}
}

// adoptingVolume keeps every buffer handed to it and writes from it later,
// as a volume that queues adopted buffers does.
type adoptingVolume struct {
	*MemVolume
	mu   sync.Mutex
	kept [][]byte
	offs []uint64
}

func (v *adoptingVolume) WriteAdopted(ctx context.Context, p []byte, off uint64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.kept = append(v.kept, p)
	v.offs = append(v.offs, off)
	return nil
}

// TestWriteAdopted: a volume that adopts write buffers gets each one to
// keep, and the server never reuses one for a later request.
func TestWriteAdopted(t *testing.T) {
	mb := NewMemBackend()
	var av *adoptingVolume
	tb := &testBackend{MemBackend: mb, wrap: func(v *MemVolume) Volume {
		av = &adoptingVolume{MemVolume: v}
		return av
	}}
	mb.Add("disk", 8<<20)
	addr := startServer(t, &Server{Backend: tb})
	c := connect(t, addr, "disk", true, false)
	var want [][]byte
	for i, n := range []int{4096, 4096, 65536, 65536, 1 << 20, 1 << 20, 4096} {
		p := bytes.Repeat([]byte{byte(i + 1)}, n)
		c.writeAt(p, uint64(i)<<20)
		want = append(want, p)
	}
	c.disconnect()
	av.mu.Lock()
	defer av.mu.Unlock()
	if len(av.kept) != len(want) {
		t.Fatalf("volume adopted %d buffers, want %d", len(av.kept), len(want))
	}
	for i := range want {
		if !bytes.Equal(av.kept[i], want[i]) {
			t.Errorf("adopted buffer %d (%d bytes) changed after the server handed it over", i, len(want[i]))
		}
	}
	if diff := cmp.Diff([]uint64{0, 1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20, 6 << 20}, av.offs); diff != "" {
		t.Fatalf("offsets (-want +got):\n%s", diff)
	}
}
