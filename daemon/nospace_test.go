package daemon

import (
	"bytes"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/sheepdog-go/sheepdog/disk"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// TestFullDiskIsAClearErrorAndLosesNothing: when the disk fills up, a
// write fails with ENOSPC (NBD's error for it) and everything written
// before is intact; once space is back, writes work again.
func TestFullDiskIsAClearErrorAndLosesNothing(t *testing.T) {
	var full atomic.Bool
	ctx, _, vol := soloVolume(t, disk.Options{Fault: func(f disk.Fault) error {
		if full.Load() && f == disk.FaultJournalAlloc {
			return syscall.ENOSPC
		}
		return nil
	}})
	old := bytes.Repeat([]byte{0x42}, 1<<20)
	if err := vol.WriteAt(ctx, old, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	// The journal reserves space in steps: write until it needs more.
	chunk := bytes.Repeat([]byte{0x43}, 1<<20)
	var err error
	for off := uint64(8 << 20); ; off += 1 << 20 {
		if off >= 60<<20 {
			t.Fatal("no write failed although the disk was full")
		}
		err = vol.WriteAt(ctx, chunk, off, false)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, nbd.ErrNoSpace) {
		t.Fatalf("write on a full disk: %v, want an error wrapping nbd.ErrNoSpace", err)
	}
	got := make([]byte, len(old))
	if err := vol.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("data written before the disk filled up: err %v, intact %v", err, bytes.Equal(got, old))
	}
	full.Store(false)
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{0x44}, 4096), 8<<20, false); err != nil {
		t.Fatalf("write after space came back: %v", err)
	}
}
