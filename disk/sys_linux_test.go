//go:build linux

package disk

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// processCPU is the CPU time (user + system) used so far by the whole
// process, all goroutines and threads included.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fileID identifies the file f refers to: its inode number and, where the
// filesystem records it, its birth time (inode numbers are reused).
func fileID(f *os.File) (string, error) {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME, &stx); err != nil {
		return "", &os.PathError{Op: "statx", Path: f.Name(), Err: err}
	}
	if stx.Mask&unix.STATX_BTIME == 0 {
		return fmt.Sprint(stx.Ino), nil
	}
	return fmt.Sprint(stx.Ino, stx.Btime.Sec, stx.Btime.Nsec), nil
}

// TestWriteCachedAt: the raw pwrite writes exactly b at off, and reports
// a failed write (a descriptor opened read-only) as an error.
func TestWriteCachedAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := bytes.Repeat([]byte("0123456789"), 30000)
	if err := writeCachedAt(f, b, 4096); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 4096), b...)
	if !bytes.Equal(got, want) {
		t.Fatalf("file holds %d bytes that differ from the %d written at 4096", len(got), len(b))
	}
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := writeCachedAt(ro, b, 0); err == nil {
		t.Error("a write through a read-only descriptor succeeded")
	}
}
