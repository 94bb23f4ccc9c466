//go:build linux

package disk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// evict drops the clean page-cache pages of path.
func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	must(t, unix.Fdatasync(int(f.Fd())))
	must(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
}

func TestTryRead(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	data := pattern(7, 4*ChunkSize+100)
	must(t, s.Write(0xa, ObjectMeta{Version: 3, ReqID: 9}, 0, data, true))
	closeT(t, s)

	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	p := make([]byte, ChunkSize)
	if _, ok, err := s.TryRead(0xa, 0, p); ok {
		t.Fatalf("TryRead before the object's files are open: ok with err %v; want ok=false", err)
	}
	if _, err := s.Read(0xa, 0, make([]byte, len(data))); err != nil {
		t.Fatal(err)
	}
	ranges := []struct{ off, n int64 }{
		{0, ChunkSize}, {1, 10}, {ChunkSize - 1, 2}, {3 * ChunkSize, ChunkSize + 100},
		{4*ChunkSize + 50, 100}, {4*ChunkSize + 100, 10}, {10 * ChunkSize, ChunkSize},
	}
	check := func(when string, wantOK bool) (blocked int) {
		t.Helper()
		for _, r := range ranges {
			got := bytes.Repeat([]byte{0xee}, int(r.n))
			meta, ok, err := s.TryRead(0xa, r.off, got)
			if !ok {
				if wantOK {
					t.Fatalf("%s: TryRead(%d, %d) would block", when, r.off, r.n)
				}
				blocked++
				continue
			}
			want := make([]byte, r.n)
			wmeta, werr := s.Read(0xa, r.off, want)
			if err != werr || meta != wmeta || !bytes.Equal(got, want) {
				t.Fatalf("%s: TryRead(%d, %d) = %+v, %v; Read = %+v, %v; equal data %v",
					when, r.off, r.n, meta, err, wmeta, werr, bytes.Equal(got, want))
			}
		}
		return blocked
	}
	check("cached", true)

	// Pages the device must supply make TryRead decline, never guess.
	evict(t, filepath.Join(dir, "obj", "000000000000000a"))
	var st unix.Statfs_t
	must(t, unix.Statfs(dir, &st))
	if blocked := check("evicted", false); blocked == 0 && st.Type != unix.TMPFS_MAGIC {
		t.Fatal("TryRead read pages evicted from the page cache without blocking")
	}
	if _, err := s.Read(0xa, 0, make([]byte, len(data))); err != nil {
		t.Fatal(err)
	}
	check("cached again", true)

	// A pending (unapplied) write is overlaid as Read does.
	must(t, s.Write(0xa, ObjectMeta{Version: 4}, 10, []byte("fresh"), false))
	check("after a write", false)

	if _, ok, err := s.TryRead(0xdead, 0, p); !ok || !errors.Is(err, ErrNotFound) {
		t.Fatalf("TryRead(missing) = %v, ok=%v; want ErrNotFound", err, ok)
	}
}

func TestTryReadCorrupt(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, quietOpts())
	must(t, s.Write(0xb, ObjectMeta{Version: 1}, 0, pattern(3, 2*ChunkSize), true))
	closeT(t, s)
	path := filepath.Join(dir, "obj", "000000000000000b")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt([]byte{0x55}, ChunkSize+7)
	must(t, err)
	must(t, f.Close())

	s = openT(t, dir, quietOpts())
	defer closeT(t, s)
	s.Read(0xb, 0, make([]byte, ChunkSize)) // open the files, load the checksums
	p := make([]byte, 2*ChunkSize)
	_, ok, err := s.TryRead(0xb, 0, p)
	if !ok || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("TryRead of a corrupt chunk = %v, ok=%v; want ErrCorrupt", err, ok)
	}
	if !bytes.Equal(p, make([]byte, len(p))) {
		t.Fatal("TryRead left data in p after a checksum failure")
	}
}
