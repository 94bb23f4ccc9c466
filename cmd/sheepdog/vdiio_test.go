package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/internal/nbdclient"
	"github.com/sheepdog-go/sheepdog/nbd"
)

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		el          time.Duration
		want        string
	}{
		{0, 256 << 20, 0, "writing vm: 0 B of 256.0 MiB (0%), 0 B/s, ETA --:--"},
		{64 << 20, 256 << 20, 2 * time.Second, "writing vm: 64.0 MiB of 256.0 MiB (25%), 32.0 MiB/s, ETA 0:06"},
		{3 << 30, 4 << 30, 100 * time.Second, "writing vm: 3.0 GiB of 4.0 GiB (75%), 30.7 MiB/s, ETA 0:33"},
		{1 << 30, 1 << 40, 10 * time.Second, "writing vm: 1.0 GiB of 1.0 TiB (0%), 102.4 MiB/s, ETA 2:50:30"},
		{1536, 0, time.Second, "writing vm: 1.5 KiB, 1.5 KiB/s"},
		{100, 0, time.Second, "writing vm: 100 B, 100 B/s"},
	} {
		if got := progressLine("writing vm", tc.done, tc.total, tc.el); got != tc.want {
			t.Errorf("progressLine(%d, %d, %v) = %q, want %q", tc.done, tc.total, tc.el, got, tc.want)
		}
	}
	// Not a terminal: no progress at all.
	var buf bytes.Buffer
	p := startProgress(&buf, "x", 10)
	p.add(5)
	p.finish("", nil)
	if p != nil || buf.Len() > 0 {
		t.Errorf("progress on a buffer: %v %q", p, buf.String())
	}
}

func TestReachable(t *testing.T) {
	for _, tc := range []struct{ listen, known, want string }{
		{"10.0.0.2:10809", "10.0.0.1:7000", "10.0.0.2:10809"},
		{":10809", "10.0.0.1:7000", "10.0.0.1:10809"},
		{"0.0.0.0:10809", "sheep1:7000", "sheep1:10809"},
		{"[::]:10809", "[fd00::1]:7000", "[fd00::1]:10809"},
		{"localhost:10809", "127.0.0.1:7000", "localhost:10809"},
	} {
		if got := reachable(tc.listen, tc.known); got != tc.want {
			t.Errorf("reachable(%q, %q) = %q, want %q", tc.listen, tc.known, got, tc.want)
		}
	}
}

func TestChunking(t *testing.T) {
	for _, tc := range []struct {
		shift    int
		maxBlock uint32
		want     int
	}{
		{22, 32 << 20, 4 << 20},
		{20, 32 << 20, 1 << 20},
		{25, 32 << 20, 4 << 20},
		{22, 1 << 20, 1 << 20},
		{0, 32 << 20, 4 << 20},
	} {
		if got := chunkSize(tc.shift, tc.maxBlock); got != tc.want {
			t.Errorf("chunkSize(%d, %d) = %d, want %d", tc.shift, tc.maxBlock, got, tc.want)
		}
	}
	for _, tc := range []struct {
		off  uint64
		left uint64
		want int
	}{
		{0, 100 << 20, 4 << 20},
		{4<<20 - 1, 100 << 20, 1},
		{5 << 20, 100 << 20, 3 << 20},
		{5 << 20, 1000, 1000},
	} {
		if got := until(tc.off, 4<<20, tc.left); got != tc.want {
			t.Errorf("until(%d, 4M, %d) = %d, want %d", tc.off, tc.left, got, tc.want)
		}
	}
}

// ioSizes records the largest read, write and zero request a volume got.
type ioSizes struct {
	nbd.Backend
	mu                   sync.Mutex
	read, write, zero    uint64
	reads, writes, zero0 int
}

func (r *ioSizes) Open(ctx context.Context, name string) (nbd.Volume, error) {
	v, err := r.Backend.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	return &sizedVolume{Volume: v, r: r}, nil
}

func (r *ioSizes) note(max *uint64, count *int, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*max = maxOf(*max, n)
	*count++
}

func maxOf(a, b uint64) uint64 { return max(a, b) }

type sizedVolume struct {
	nbd.Volume
	r *ioSizes
}

// Extents keeps the volume's block status (holes) visible.
func (v *sizedVolume) Extents(ctx context.Context, off, length uint64) ([]nbd.Extent, error) {
	return v.Volume.(nbd.Extenter).Extents(ctx, off, length)
}

func (v *sizedVolume) ReadAt(ctx context.Context, p []byte, off uint64) error {
	v.r.note(&v.r.read, &v.r.reads, uint64(len(p)))
	return v.Volume.ReadAt(ctx, p, off)
}

func (v *sizedVolume) WriteAt(ctx context.Context, p []byte, off uint64, fua bool) error {
	v.r.note(&v.r.write, &v.r.writes, uint64(len(p)))
	return v.Volume.WriteAt(ctx, p, off, fua)
}

func (v *sizedVolume) Zero(ctx context.Context, off, length uint64, flags nbd.ZeroFlags) error {
	v.r.note(&v.r.zero, &v.r.zero0, length)
	return v.Volume.Zero(ctx, off, length, flags)
}

// memExportSizes serves a MemBackend volume, attaches it with nbdclient
// and records the requests' sizes.
func memExportSizes(t *testing.T, size uint64) (*nbd.MemVolume, func() *nbdclient.Client, *ioSizes) {
	t.Helper()
	b := nbd.NewMemBackend()
	b.AttachWait = 5 * time.Second
	vol := b.Add("v", size)
	rec := &ioSizes{Backend: b}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = (&nbd.Server{Backend: rec, Logger: slog.New(slog.DiscardHandler)}).Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return vol, func() *nbdclient.Client {
		c, err := openNBD(ctx, ln.Addr().String(), "v")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}, rec
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWriteStreamZeros: zeros over holes are skipped, zeros over data
// are written as zeroes, data is written; what the export holds after is
// the input over what it held.
func TestWriteStreamZeros(t *testing.T) {
	const m = 1 << 20
	vol, open, sizes := memExportSizes(t, 32*m)
	c := open()
	old := randomBytes(t, 6*m)
	if err := c.Write(old, 8*m, false); err != nil { // data in chunks 2 and 3 (partly)
		t.Fatal(err)
	}
	in := make([]byte, 24*m)
	copy(in[16*m:], randomBytes(t, 2*m)) // chunk 4 gets data
	copy(in[21*m:], randomBytes(t, 100)) // chunk 5, a little
	st, err := writeStream(c, bytes.NewReader(in), 0, 32*m, 4*m, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := writeStats{written: 8 * m, zeroed: 8 * m, skipped: 8 * m}
	if diff := cmp.Diff(want, st, cmp.AllowUnexported(writeStats{})); diff != "" {
		t.Errorf("write stats (-want +got):\n%s", diff)
	}
	// Data goes out in requests of at most ioRequest (1 MiB: 8 of them
	// after the 6 MiB set-up write); zeros over data in one request per
	// 4 MiB block, so a whole object can become a hole again.
	sizes.mu.Lock()
	if sizes.write != 6*m || sizes.writes != 1+8 {
		t.Errorf("writes: %d, the largest %d bytes; want 9, the largest the 6 MiB set-up (then %d)", sizes.writes, sizes.write, ioRequest)
	}
	if sizes.zero != 4*m || sizes.zero0 != 2 {
		t.Errorf("zero requests: %d, the largest %d bytes; want 2 of 4 MiB", sizes.zero0, sizes.zero)
	}
	sizes.mu.Unlock()
	got := make([]byte, 32*m)
	if err := c.Read(got, 0); err != nil {
		t.Fatal(err)
	}
	wantData := make([]byte, 32*m)
	copy(wantData, in)
	sameBytes(t, "export after writeStream", got, wantData)
	// Chunks 2 and 3 were zeroed (no allocation left), chunks 0, 1 never
	// touched: only chunks 4 and 5 hold data (whole 4 MiB writes).
	if n := vol.AllocatedChunks() * nbd.MemChunkSize; n != 8*m {
		t.Errorf("%d bytes allocated, want %d", n, 8*m)
	}
	// Input beyond the end of the export is an error.
	if _, err := writeStream(c, bytes.NewReader(make([]byte, 4*m+1)), 28*m, 4*m, 4*m, true, nil); err == nil {
		t.Error("input past the end of the export: no error")
	}
	c.Close(time.Second)
}

func TestReadStreamHoles(t *testing.T) {
	const m = 1 << 20
	_, open, sizes := memExportSizes(t, 20*m)
	c := open()
	defer c.Close(time.Second)
	want := make([]byte, 20*m)
	copy(want[5*m:], randomBytes(t, 3*m))
	copy(want[19*m:], randomBytes(t, m))
	if err := c.Write(want[5*m:8*m], 5*m, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(want[19*m:], 19*m, false); err != nil {
		t.Fatal(err)
	}
	// To a stream: every byte, holes as zeros.
	var buf bytes.Buffer
	if err := readStream(c, &buf, nil, false, m, 20*m, 4*m, nil); err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "readStream to a buffer", buf.Bytes(), want[m:])
	// Only the 4 MiB blocks 1 and 4 hold data: 8 reads of 1 MiB, nothing
	// asked of the holes.
	sizes.mu.Lock()
	if sizes.read != ioRequest || sizes.reads != 8 {
		t.Errorf("reads: %d, the largest %d bytes; want 8 of %d", sizes.reads, sizes.read, ioRequest)
	}
	sizes.mu.Unlock()
	// To a file: holes stay holes (the caller truncates to the length).
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := readStream(c, f, f, true, 0, 20*m, 4*m, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(20 * m); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "readStream to a sparse file", got, want)
}
